"""`python -m daas bench gpu`: the worker's compute path on CUDA (PyTorch runtime), where a GPU is present.

1. Same labels: the bench's distinct images and scikit-image's sample photos (as tests/test_runtimes.py
   uses them) on the GPU against PyTorch on the CPU: top-1, top-5 sets, the largest score move.
2. The forward pass alone (`Runtime.forward`: uint8 pixels from host memory in, logits back), per
   batch of 1, 10, 64 and 256, and the network alone on data already on the GPU, in f32 and under
   bf16 autocast (would a lower precision pay?).
3. The worker's path per chunk, `pipeline.classify_batch` (decode, prepare, one forward pass per
   chunk, results), in 1 to all-but-one worker processes sharing the GPU, chunks of 10 and 64: images/s
   with each image's decode and forward share. Fetching from S3 is left out: it is measured by the
   main bench on the local endpoint, and a GPU does not change it.

No test needs a GPU: tests/test_bench_gpu.py runs part 3 on the CPU. The figures in the README come
from one run on a lent GPU machine (docs/gpu.json).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from daas import config

BATCHES = (1, 10, 64, 256)
CHUNKS = (10, 64)           # a task's images (the web tier's default chunk, and a large one)
SECONDS = 8.0               # each process-count run
REPEATS = 30                # timed forward passes per batch size, after WARMUP
WARMUP = 5


@functools.cache
def bench_images() -> tuple[bytes, ...]:
    """The bench's distinct images (encoded once per run: the largest are re-encoded at 3000 px)."""
    from daas.bench.workload import build_images

    with tempfile.TemporaryDirectory() as folder:
        return tuple(data for _, data in build_images(Path(folder)))


def photos() -> list[bytes]:
    """The bench's distinct images, then scikit-image's sample photos."""
    import skimage

    from daas.bench.workload import SAMPLE_PHOTOS

    return [*bench_images(), *((Path(skimage.__file__).parent / "data" / name).read_bytes() for name in SAMPLE_PHOTOS)]


def settings(device: str) -> config.Settings:
    return config.load().with_(runtime="torch", device=device)


def same_labels(files: list[bytes]) -> dict:
    from daas import images
    from daas.classifier import Classifier, agreement

    pictures = [images.decode(data, 50_000_000, draft_size=images.WORKER_DRAFT_SIZE) for data in files]
    cpu = Classifier(settings("cpu")).classify(pictures)
    gpu = Classifier(settings("cuda")).classify(pictures)
    found = agreement(cpu, gpu)
    return {"images": len(pictures), "top1_same": len(pictures) - len(found["top1_differs"]),
            "top5_set_same": len(pictures) - len(found["top5_set_differs"]),
            "max_score_move": round(found["max_score_move"], 4), "labels": [g.label for g in gpu]}


def _median_ms(call, repeats: int = REPEATS, sync=lambda: None) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def forward_times() -> dict:
    import torch

    from daas import runtimes

    runtime = runtimes.load(settings("cuda"))
    rng, out = np.random.default_rng(0), {"forward": {}, "network": {}}
    for n in BATCHES:
        pixels = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
        ms = _median_ms(lambda: runtime.forward(pixels))
        out["forward"][n] = {"ms": ms, "images_per_s": round(n * 1000 / ms)}
        on_gpu = torch.from_numpy(pixels).cuda()
        for precision, autocast in (("f32", False), ("bf16_autocast", True)):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out["network"].setdefault(n, {})[precision] = _median_ms(
                    lambda: runtime.model(on_gpu), sync=torch.cuda.synchronize)
    return out


def _classify_for(chunk: int, seconds: float, device: str, files: tuple[bytes, ...], start, results) -> None:
    """One worker process: the worker's chunk path over `files` for `seconds`."""
    os.environ.update(DAAS_DEVICE=device, DAAS_RUNTIME="torch")
    from daas import pipeline

    cfg = config.load()
    ids = [[f"{i:032x}", f"image-{i}"] for i in range(chunk)]

    def one_chunk(first: int) -> list[dict]:
        return pipeline.classify_batch(cfg, "bench", ids, [(files[(first + i) % len(files)], 0.0) for i in range(chunk)])

    assert pipeline.classifier().device == device
    one_chunk(0)  # warm: the first forward pass of each shape sets up the GPU's kernels
    start.wait()
    done, started, decode_ms, forward_ms, labels = 0, time.perf_counter(), 0.0, 0.0, set()
    while time.perf_counter() - started < seconds:
        for result in one_chunk(done):
            decode_ms += result["timings_ms"]["decode"]
            forward_ms += result["timings_ms"]["forward"]
            labels.add(result["label"])
        done += chunk
    results.put((done, time.perf_counter() - started, decode_ms, forward_ms, sorted(labels)))


def worker_processes(count: int, chunk: int, seconds: float = SECONDS, device: str = "cuda") -> dict:
    """`count` worker processes classifying chunks of `chunk` of the bench's images at once: images/s
    in all."""
    context = get_context("spawn")
    start, results = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_classify_for, args=(chunk, seconds, device, bench_images(), start, results))
                 for _ in range(count)]
    for process in processes:
        process.start()
    got = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(30)
    images, wall = sum(g[0] for g in got), max(g[1] for g in got)
    return {"processes": count, "chunk": chunk, "images": images, "images_per_s": round(images / wall, 1),
            "decode_ms_per_image": round(sum(g[2] for g in got) / images, 2),
            "forward_ms_per_image": round(sum(g[3] for g in got) / images, 2),
            "labels": sorted({label for g in got for label in g[4]})}


def process_counts(cores: int) -> list[int]:
    return sorted({1, max(1, cores // 4), max(1, cores // 2), max(1, cores - 1)})


def run(out: Path) -> dict:
    import torch

    from daas.bench.harness import machine

    if not torch.cuda.is_available():
        raise SystemExit("bench gpu needs an NVIDIA GPU that PyTorch can use (torch.cuda.is_available() is False)")
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {**machine(config.load()), "gpu": torch.cuda.get_device_name(0)},
              "same_labels": same_labels(photos()), **forward_times(), "worker_processes": []}
    cores = os.cpu_count() or 1
    for chunk in CHUNKS:
        for count in process_counts(cores):
            report["worker_processes"].append(worker_processes(count, chunk))
            (out / "gpu.json").write_text(json.dumps(report, indent=1))
    return report


def format_report(report: dict) -> str:
    same = report["same_labels"]
    lines = [f"{report['machine']['gpu']}, {report['machine']['cores']} cores ({report['machine']['cpu']})",
             f"same labels as PyTorch on the CPU: top-1 {same['top1_same']}/{same['images']}, "
             f"top-5 sets {same['top5_set_same']}/{same['images']}, largest score move {same['max_score_move']}",
             "batch | forward ms (host in, host out) | images/s | network f32 ms | network bf16 autocast ms"]
    for n, forward in report["forward"].items():
        network = report["network"][n]
        lines.append(f"{n:>5} | {forward['ms']:>8} | {forward['images_per_s']:>8} | {network['f32']:>8} | "
                     f"{network['bf16_autocast']:>8}")
    lines.append("processes | chunk | images/s | decode ms/image | forward ms/image")
    for run_ in report["worker_processes"]:
        lines.append(f"{run_['processes']:>9} | {run_['chunk']:>5} | {run_['images_per_s']:>8} | "
                     f"{run_['decode_ms_per_image']:>8} | {run_['forward_ms_per_image']:>8}")
    return "\n".join(lines)


OUTPUTS = ("gpu.json",)  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench gpu` (daas.bench.main prints it)."""
    return run(out)
