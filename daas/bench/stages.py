"""Stages: where a worker's CPU goes per image (decode, prepare, the forward pass of each runtime)."""
from __future__ import annotations

import time

from daas import config
from daas.bench.harness import RAW_RUNTIMES
from daas.bench.workload import File


def stages_mode(settings: config.Settings, files: list[File], repeat: int = 3) -> dict:
    """Mean ms per image of each stage in this process (one thread), over the distinct images:
    decode (JPEG at reduced scale, others shrunk), prepare (one resize of the crop region), the
    preprocessing it replaced (torchvision resize, crop and float normalisation), and the forward
    pass on each runtime (normalisation included: it is in the graph)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    from daas import images
    from daas.classifier import Classifier, prepare
    from daas.model import LITE_MEAN, LITE_STD

    torch.set_num_threads(settings.inference_threads)
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)

    def before(image):  # the preprocessing of every release before issue 18
        tensor = TF.center_crop(TF.resize(TF.pil_to_tensor(image), 256, antialias=True), [224, 224])
        return ((tensor[None].float().div_(255) - mean) / std).contiguous(memory_format=torch.channels_last)

    def timed(function, inputs) -> float:
        function(inputs[0])  # warm
        started = time.perf_counter()
        for _ in range(repeat):
            for item in inputs:
                function(item)
        return round((time.perf_counter() - started) * 1000 / (repeat * len(inputs)), 2)

    data = [d for _, d in files]
    decoded = [images.decode(d, settings.max_image_pixels, draft_size=images.WORKER_DRAFT_SIZE) for d in data]
    pixels = [prepare(image)[None] for image in decoded]
    stages = {"decode": timed(lambda d: images.decode(d, settings.max_image_pixels, draft_size=images.WORKER_DRAFT_SIZE), data),
              "prepare": timed(prepare, decoded),
              "prepare_before": timed(before, decoded)}
    for runtime in RAW_RUNTIMES:
        forward = Classifier(settings.with_(runtime=runtime)).runtime.forward
        stages[f"forward_{runtime}"] = timed(forward, pixels)
    return stages
