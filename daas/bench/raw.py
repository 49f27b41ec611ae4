"""Raw: the model alone (decode, preprocess, forward) in the workers' process and thread layout;
the honest limit the service is compared with."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import get_context

from daas import config
from daas.bench.harness import percentiles
from daas.bench.workload import File


_model = None
_images: list[bytes] = []
_max_pixels = 0


def _raw_init(settings: config.Settings, data: list[bytes], barrier) -> None:
    """Pool initializer: load the model like a worker does, warm it up, wait for the others."""
    global _model, _images, _max_pixels
    from daas.classifier import Classifier, configure_process

    configure_process()
    _model, _images, _max_pixels = Classifier(settings), data, settings.max_image_pixels
    for i in range(min(3, len(data))):  # the first forward passes are slow
        _raw_classify(i)
    barrier.wait(timeout=600)


def _raw_classify(index: int) -> tuple[str, float]:
    """Decode, preprocess and classify one image as daas.worker does: (label, seconds)."""
    from daas import images

    started = time.perf_counter()
    image = images.decode(_images[index], _max_pixels, draft_size=images.WORKER_DRAFT_SIZE)
    label = _model.classify([image])[0].label
    return label, time.perf_counter() - started


@contextmanager
def raw_pool(settings: config.Settings, files: list[File]) -> Iterator:
    """settings.scale_max processes that hold the images and a warm model each, as workers do."""
    processes = settings.scale_max
    ctx = get_context("spawn")  # fresh interpreters, like the workers
    data = [d for _, d in files]
    with ctx.Pool(processes, _raw_init, (settings, data, ctx.Barrier(processes))) as pool:
        pool.map(_raw_classify, range(processes), chunksize=1)  # returns once every process is warm
        yield pool


def raw_run(pool, files: list[File], count: int) -> dict:
    """images/s of the pool's processes on `count` images."""
    started = time.perf_counter()
    throughput = pool.map(_raw_classify, [i % len(files) for i in range(count)], chunksize=1)
    seconds = time.perf_counter() - started
    return {"images": count, "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 3),
            "busy_ms_per_image": percentiles([t for _, t in throughput]),
            "labels": [label for label, _ in throughput[:len(files)]]}


def raw_single(pool, files: list[File], count: int) -> dict:
    """Per-image time of `count` images, one at a time."""
    times = [pool.apply(_raw_classify, (i % len(files),))[1] for i in range(count)]
    return {"images": count, "latency_ms": percentiles(times), "latencies_ms": [round(t * 1000, 2) for t in times]}
