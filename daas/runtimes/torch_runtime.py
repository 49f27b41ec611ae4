"""PyTorch eager: the reference the other runtimes are checked against, and the GPU path."""
from __future__ import annotations

import numpy as np
import torch

from daas import config
from daas.model import from_pixels


class TorchRuntime:
    name = "torch"

    def __init__(self, cfg: config.Settings, device: str):
        if cfg.precision == "bf16":
            raise ValueError("DAAS_RUNTIME=torch runs f32 only: use DAAS_RUNTIME=openvino for bf16")
        torch.set_num_threads(cfg.inference_threads)
        self.device, self.precision = device, "f32"
        self._device = torch.device(device)
        self.model = from_pixels(cfg.model, cfg.model_weights).to(self._device).to(memory_format=torch.channels_last)

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        if not pixels.flags.writeable:  # torch warns on read-only arrays (Pillow's are)
            pixels = pixels.copy()
        with torch.inference_mode():  # on a GPU the whole chunk is one forward pass (daas.pipeline)
            logits = self.model(torch.from_numpy(pixels).to(self._device, non_blocking=True))
        return logits.float().cpu().numpy()
