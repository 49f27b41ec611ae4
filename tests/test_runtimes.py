"""Every inference runtime gives the labels PyTorch gives (issue 18), and serves without torch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from daas import config, images, runtimes
from daas.bench.gpu import photos
from daas.bench.starts import boot
from daas.classifier import Classifier, agreement, imagenet_labels
from daas.runtimes import export
from tests.conftest import skimage_photo

F32 = [("onnxruntime", "f32"), ("openvino", "f32")]


def bf16_native() -> bool:
    import openvino

    from daas.runtimes.ov_runtime import native_bf16

    return native_bf16(openvino.Core())


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> config.Settings:
    torch.set_num_threads(2)
    return config.Settings(state_dir=tmp_path_factory.mktemp("state"), inference_threads=2)


@pytest.fixture(scope="module")
def pictures() -> list:
    """The bench's distinct images (its 120 are these, cycled) and scikit-image's sample photos, the
    32 that `bench gpu` compares too, decoded as a worker decodes them."""
    return [images.decode(data, 50_000_000, draft_size=images.WORKER_DRAFT_SIZE) for data in photos()]


@pytest.fixture(scope="module")
def reference(settings, pictures) -> list:
    return Classifier(settings, runtime="torch").classify(pictures)


@pytest.mark.parametrize("runtime,precision", F32)
def test_f32_runtimes_give_pytorchs_labels_top5_and_scores(settings, pictures, reference, runtime, precision):
    predictions = Classifier(settings, runtime=runtime, precision=precision).classify(pictures)
    found = agreement(reference, predictions)
    assert found["top1_differs"] == [] and found["top5_set_differs"] == []
    assert found["max_score_move"] <= 1e-3


@pytest.mark.skipif(not bf16_native(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_the_default_where_native_keeps_every_top1(settings, pictures, reference):
    """bf16 may be the default (precision auto) only where top-1 agrees on every image; the
    README states how far the scores moved (printed here with -s)."""
    model = Classifier(settings, runtime="openvino", precision="auto")
    assert model.runtime.precision == "bf16"
    found = agreement(reference, model.classify(pictures))
    print("bf16 against torch f32:", json.dumps(found))
    assert found["top1_differs"] == []
    assert found["max_score_move"] < 0.1


def test_a_chunk_in_one_pass_equals_one_by_one(settings, pictures):
    model = Classifier(settings, runtime="openvino", precision="f32")
    batched = model.classify(pictures[:6])
    single = [model.classify([p])[0] for p in pictures[:6]]
    assert [b.label for b in batched] == [s.label for s in single]
    assert all(abs(b.score - s.score) < 1e-4 for b, s in zip(batched, single))


def test_coffee_is_espresso_on_every_runtime(settings):
    coffee = images.decode(skimage_photo("coffee.png"), 50_000_000)
    for runtime in runtimes.RUNTIMES:
        prediction = Classifier(settings, runtime=runtime).classify([coffee])[0]
        assert (prediction.label, prediction.score > 0.9) == ("espresso", True), runtime


def test_another_torchvision_model_agrees_across_runtimes(tmp_path, pictures):
    """The runtime path serves the torchvision models too (weights from a local file). Random
    weights here (no download), so only images whose top two are clearly apart are compared on top-1."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    settings = config.Settings(state_dir=tmp_path, model="resnet18", model_weights=str(weights), inference_threads=2)
    reference = Classifier(settings, runtime="torch").runtime.forward
    for runtime, precision in F32:
        other = Classifier(settings, runtime=runtime, precision=precision).runtime.forward
        for picture in pictures[:8]:
            pixels = Classifier.prepare(picture)[None]
            expected, got = reference(pixels), other(pixels)
            assert abs(expected - got).max() <= 1e-3 * max(1.0, abs(expected).max()), runtime
            assert expected.argmax() == got.argmax(), runtime


def test_a_worker_on_openvino_or_onnxruntime_never_imports_torch(settings):
    """A fresh process loads the model as a worker does (the export cached) and labels coffee.png
    (`make bench` times this per runtime)."""
    import skimage

    coffee = Path(skimage.__file__).parent / "data" / "coffee.png"
    export.onnx_file(settings)  # made by the first worker, or by Packer for the AMI
    for runtime in ("openvino", "onnxruntime"):
        started = boot(settings.with_(runtime=runtime), coffee)
        assert started["label"] == "espresso" and not started["torch_imported"], (runtime, started)
        assert started["resting_rss_mb"] < 400, started  # torch alone takes more (579 MB resting in the bench)
    assert boot(settings.with_(runtime="torch"), coffee)["torch_imported"]


def test_export_is_made_once_and_keyed_by_the_weights(tmp_path, caplog):
    import torchvision

    settings = config.Settings(state_dir=tmp_path, model="mobilenet_v3_small", inference_threads=1)
    weights = [tmp_path / "a.pth", tmp_path / "b.pth"]
    for seed, path in enumerate(weights):
        torch.manual_seed(seed)
        torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    first = settings.with_(model_weights=str(weights[0]))
    Path(settings.model_cache).mkdir(parents=True)
    (Path(settings.model_cache) / "mobilenet_v3_small-x.4242.partial").write_bytes(b"a killed export's")
    with caplog.at_level("WARNING", logger="daas.runtimes.export"):
        made = export.onnx_file(first)
        mtime = made.stat().st_mtime_ns
        assert export.onnx_file(first) == made and made.stat().st_mtime_ns == mtime
    assert sum("exporting mobilenet_v3_small to ONNX once" in r.getMessage() for r in caplog.records) == 1
    other = export.onnx_file(settings.with_(model_weights=str(weights[1])))
    assert other != made and other.parent == Path(settings.model_cache)
    assert list(Path(settings.model_cache).glob("*.partial")) == []  # a killed export's is gone too


@pytest.mark.parametrize("changes,message", [
    ({"runtime": "tensorrt"}, "DAAS_RUNTIME='tensorrt'"),
    ({"precision": "fp8"}, "DAAS_PRECISION='fp8'"),
    ({"runtime": "openvino", "device": "cuda"}, "OpenVINO does not run on NVIDIA GPUs"),
])
def test_a_wrong_runtime_setting_says_what_to_use(changes, message):
    with pytest.raises(ValueError, match=message):
        runtimes.resolve(config.Settings(**changes))


def test_bf16_where_the_runtime_has_none_is_refused(settings):
    with pytest.raises(ValueError, match="runs f32 only"):
        Classifier(settings, runtime="onnxruntime", precision="bf16")


def test_labels_file_is_torchvisions_list():
    from torchvision.models import ResNet18_Weights

    assert imagenet_labels() == list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def test_export_command_makes_the_file_the_ami_bakes_in(tmp_path):
    """`python -m daas export`, as Packer runs it: the export is made, loaded and run once."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DAAS_MODEL_CACHE": str(tmp_path / "models"), "DAAS_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "daas", "export"], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    made = list((tmp_path / "models").glob("efficientnet_lite0-*.onnx"))
    assert len(made) == 1 and str(made[0]) in done.stdout and "loads on openvino" in done.stdout
    assert "exporting efficientnet_lite0 to ONNX once" in done.stderr
