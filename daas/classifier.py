"""The classifier the workers use: preprocessing, a runtime's forward pass, ImageNet labels.

No torch here: on the OpenVINO and ONNX Runtime runtimes a worker never imports it (`make bench`,
boot: a worker's model ready and first image labelled in 0.49 s and 158 MB resident on OpenVINO,
against 1.15 s and 579 MB on PyTorch; see README, Inference runtime).
"""
from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np
from PIL import Image

from daas import config, runtimes

log = logging.getLogger(__name__)

RESIZE, CROP = 256, 224  # shorter side resized to 256, centre 224×224 cropped (the reference evaluation)

# glibc malloc parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def configure_process() -> bool:
    """Set up a process that classifies images all day: a malloc that keeps freed memory for the
    next image. Returns whether the allocator could be tuned (glibc only).

    glibc hands large freed blocks (decoded images, activations) back to the kernel at once, so each
    image faulted its pages in anew: measured in a worker, about 3,000 page faults and 5 ms of kernel
    time per image, and 18-20% more images/s without them. Blocks of up to 32 MiB now stay on the
    heap, and the heap is trimmed only above 256 MiB free; larger blocks still come from mmap.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator alone
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top5: list[tuple[str, float]]


def agreement(reference: Sequence[Prediction], predictions: Sequence[Prediction]) -> dict:
    """How far `predictions` are from `reference`, image by image: the indices whose top-1 or
    top-5 set differ, and the largest move of a reference top-5 score (a label gone counts as 0).
    How runtimes and devices are held to the same labels (tests/test_runtimes.py, `bench gpu`)."""
    score_moves = [abs(dict(p.top5).get(label, 0.0) - score)
                   for r, p in zip(reference, predictions) for label, score in r.top5]
    return {"top1_differs": [i for i, (r, p) in enumerate(zip(reference, predictions)) if r.label != p.label],
            "top5_set_differs": [i for i, (r, p) in enumerate(zip(reference, predictions))
                                 if {l for l, _ in r.top5} != {l for l, _ in p.top5}],
            "max_score_move": max(score_moves)}


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names, in the networks' output order (as torchvision ships them)."""
    return resources.files("daas").joinpath("imagenet_classes.txt").read_text().splitlines()


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The region of a width×height image that the reference preprocessing keeps: the centre
    CROP×CROP of the image resized to RESIZE on its shorter side, in the image's own pixels."""
    side = CROP * min(width, height) / RESIZE
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def prepare(image: Image.Image) -> np.ndarray:
    """An RGB image to the network's input: CROP×CROP×3 uint8 (HWC, as Pillow holds it).

    One antialiased bilinear resize of the crop region only (Pillow's `box`), instead of resizing
    the whole image to 256 and then cropping: the pixels outside the crop are never resized.
    Normalisation happens in the runtime's graph (daas.model.FromPixels), so no float copy is made
    here. Measured per image in `make bench` (stages).
    """
    return np.asarray(image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=crop_box(*image.size)))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """A model loaded once per process on one runtime; classifies batches of RGB PIL images."""

    def __init__(self, cfg: config.Settings | None = None, **changes):
        cfg = (cfg or config.load()).with_(**changes)
        started = time.perf_counter()
        self.name = cfg.model
        self.runtime = runtimes.load(cfg)
        self.device = self.runtime.device
        self.labels = imagenet_labels()
        log.info("loaded %s on %s (%s, %s) in %.2f s", cfg.model, self.runtime.name, self.device,
                 self.runtime.precision, time.perf_counter() - started)

    prepare = staticmethod(prepare)

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        """Classify a uint8 N×224×224×3 batch."""
        probs = softmax(self.runtime.forward(batch).astype(np.float32, copy=False))
        top = np.argsort(-probs, axis=1)[:, :5]
        return [
            Prediction(self.labels[idx[0]], round(float(row[idx[0]]), 4),
                       [(self.labels[i], round(float(row[i]), 4)) for i in idx])
            for row, idx in zip(probs, top)
        ]

    def classify(self, images: Sequence[Image.Image]) -> list[Prediction]:
        batch = np.stack([prepare(image) for image in images]) if len(images) > 1 else prepare(images[0])[None]
        return self.predict(batch)
