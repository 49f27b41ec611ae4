"""OpenVINO on CPU: the fastest runtime measured here, f32 or bf16 (AVX512-BF16 and AMX)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino

from daas import config


def native_bf16(core: openvino.Core) -> bool:
    """Whether this CPU computes in bf16 natively (OpenVINO then defaults to it)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRuntime:
    name = "openvino"
    device = "cpu"

    def __init__(self, onnx_file: Path, cfg: config.Settings):
        core = openvino.Core()
        bf16 = native_bf16(core)
        if cfg.precision == "bf16" and not bf16:
            raise ValueError("DAAS_PRECISION=bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use f32 or auto")
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if bf16 else "f32")
        # Reading the ONNX file and compiling it took 0.3 s here: no compiled-model cache is needed.
        self.model = core.compile_model(str(onnx_file), "CPU", {
            "INFERENCE_NUM_THREADS": cfg.inference_threads,
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time: a solo worker's chunk, image by image
        })
        self.request = self.model.create_infer_request()

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        return self.request.infer({0: pixels})[0].copy()  # the request reuses its output buffer
