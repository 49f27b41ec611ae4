"""ONNX Runtime: CPU, or CUDA where its GPU build is installed (requirements.txt has the CPU one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from daas import config


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, onnx_file: Path, cfg: config.Settings, device: str):
        if cfg.precision == "bf16":
            raise ValueError("DAAS_RUNTIME=onnxruntime runs f32 only: use DAAS_RUNTIME=openvino for bf16")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = cfg.inference_threads, 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ValueError("this onnxruntime has no CUDA provider: install onnxruntime-gpu, or use DAAS_RUNTIME=torch")
            providers.insert(0, "CUDAExecutionProvider")
        self.device, self.precision = device, "f32"
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: pixels})[0]
