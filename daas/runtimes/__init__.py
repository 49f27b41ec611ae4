"""Inference runtimes: one class per runtime behind one interface, `Runtime`.

Every runtime runs the same graph, built from the same weights in daas.model: the network with its
preprocessing in front (daas.model.FromPixels). It takes a batch of uint8 pixels, N×224×224×3 as
Pillow decoded them, and returns the logits, N×classes. OpenVINO and ONNX Runtime run it from an
ONNX export made once per weights and exporter version (daas.runtimes.export); torch runs it eagerly.

Measured here (README, Inference runtime): one thread, batch 1, EfficientNet-Lite0 on a 2-vCPU Xeon
with AMX: torch eager 22 ms, ONNX Runtime 13 ms, OpenVINO f32 12 ms, OpenVINO bf16 3 ms, with the
same top-1 on every image of the agreement test (tests/test_runtimes.py).
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from daas import config

RUNTIMES, PRECISIONS = config.RUNTIMES, config.PRECISIONS  # the choices; Settings.check refuses others


class Runtime(Protocol):
    name: str       # openvino, onnxruntime or torch
    device: str     # cpu or cuda
    precision: str  # f32 or bf16: what it runs, after `auto` was resolved

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Logits (N×classes, float32) of a uint8 N×224×224×3 batch."""


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA GPU is present, without importing torch (its driver's device node)."""
    return os.path.exists("/dev/nvidiactl")


def resolve(cfg: config.Settings) -> tuple[str, str]:
    """(runtime, device) for the settings: `auto` is torch on a GPU, OpenVINO on CPU."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if has_nvidia_gpu() else "cpu")
    runtime = cfg.runtime if cfg.runtime != "auto" else ("torch" if device == "cuda" else "openvino")
    if device == "cuda" and runtime == "openvino":
        raise config.ConfigError("OpenVINO does not run on NVIDIA GPUs: use DAAS_RUNTIME=torch or onnxruntime with DAAS_DEVICE=cuda")
    return runtime, device


def load(cfg: config.Settings) -> Runtime:
    """The runtime the settings ask for, with the model loaded and ready."""
    runtime, device = resolve(cfg)
    if runtime == "torch":
        from daas.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(cfg, device)
    from daas.runtimes import export

    onnx_file = export.onnx_file(cfg)
    if runtime == "onnxruntime":
        from daas.runtimes.ort_runtime import OnnxRuntime

        return OnnxRuntime(onnx_file, cfg, device)
    from daas.runtimes.ov_runtime import OpenVinoRuntime

    return OpenVinoRuntime(onnx_file, cfg)
