"""What a start costs: the original app tier's process per image (baseline), a worker process's
start on each runtime (boot), and images from zero workers that the autoscaler starts (cold)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from daas import config, timeline
from daas.bench.harness import BEFORE, RAW_RUNTIMES
from daas.bench.measure import classify_all
from daas.bench.stacks import elastic_stack, wait_for_zero_workers
from daas.bench.workload import File, cycle
from daas.stack import PYTHON, Stack


# -- baseline: a new Python process per image -----------------------------------------------

BASELINE_SCRIPT = """
import sys
from daas import config, images
from daas.classifier import Classifier
classifier = Classifier(config.load())
image = images.decode(open(sys.argv[1], "rb").read(), config.load().max_image_pixels)
print(classifier.classify([image])[0].label)
"""


def baseline_mode(settings: config.Settings, folder: Path, files: list[File], sample: int) -> dict:
    """One `python -c` per image, run one after another, on PyTorch as the original app tier ran
    (torch's default thread count)."""
    env = {**os.environ, **config.to_env(settings.with_(runtime=BEFORE, inference_threads=os.cpu_count() or 1))}
    seconds, labels = [], []
    for name, _ in cycle(files, sample):
        started = time.perf_counter()
        done = subprocess.run([PYTHON, "-c", BASELINE_SCRIPT, str(folder / name)], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        seconds.append(time.perf_counter() - started)
        labels.append(done.stdout.strip())
    mean = sum(seconds) / len(seconds)
    return {"images": sample, "seconds": [round(s, 3) for s in seconds], "mean_s": round(mean, 3),
            "images_per_s": round(1 / mean, 4), "labels": labels}


# -- boot: what a worker process costs to start on each runtime ---------------------------------

BOOT_SCRIPT = """
import json, re, sys, time
started = time.perf_counter()
from daas import config, images
from daas.classifier import Classifier
model = Classifier(config.load())
label = model.classify([images.decode(open(sys.argv[1], "rb").read(), 50_000_000)])[0].label
status = open("/proc/self/status").read()
print(json.dumps({"label": label, "seconds": round(time.perf_counter() - started, 3),
                  "torch_imported": "torch" in sys.modules, "precision": model.runtime.precision,
                  "resting_rss_mb": round(int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) / 1024)}))
"""


def boot(settings: config.Settings, image: Path) -> dict:
    """A fresh process that loads the model on the settings' runtime (its export already cached) and
    labels one image, as a worker does at start: seconds, memory, and whether it imported torch."""
    env = {**os.environ, **config.to_env(settings)}
    done = subprocess.run([PYTHON, "-c", BOOT_SCRIPT, str(image)], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def boot_mode(settings: config.Settings, image: Path, rounds: int = 3) -> dict:
    """Each runtime's boot, `rounds` times in turn (ABBA); the median of each."""
    found: dict[str, list[dict]] = {runtime: [] for runtime in RAW_RUNTIMES}
    for round_ in range(rounds):
        for runtime in (RAW_RUNTIMES if round_ % 2 == 0 else RAW_RUNTIMES[::-1]):
            found[runtime].append(boot(settings.with_(runtime=runtime), image))
    return {runtime: {**sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2],
                      "seconds_runs": [r["seconds"] for r in runs]} for runtime, runs in found.items()}


# -- cold: from zero workers, the autoscaler starts them ----------------------------------------

def elastic_run(running: Stack, url: str, files: list[File]) -> dict:
    """Classify `files` starting from zero workers; leave the workers to idle out."""
    settings = running.settings
    wait_for_zero_workers(settings)
    since = time.time()
    run = classify_all(url, files)
    records = timeline.read(settings.state_dir, since=since)
    return {"images": len(files), "seconds": round(run.seconds, 3), "images_per_s": round(run.images_per_s, 3),
            "first_label_s": round(min(run.latencies), 3),
            "peak_workers": max((r["running"] + r["starting"] for r in records), default=0),
            "since": since}


def cold_mode(base: config.Settings, tmp: Path, files: list[File], count: int) -> dict:
    with elastic_stack(base, tmp, "cold") as (running, url):
        result = elastic_run(running, url, cycle(files, count))
    result.pop("since")
    return result
