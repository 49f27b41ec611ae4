"""Benchmarks, all measured in one run on this machine: `python -m daas bench [all|scaling|soak]`.

`all` compares five ways of labelling the same images:
  raw       the model alone (decode + preprocess + forward) in N processes, as the workers run it, on
            each inference runtime; "raw" is the fastest of them
  service   the same images through the web API, N warm workers: images/s at steady state (first
            label to last; end to end is reported too) and upload-to-label latency; on the default
            runtime, and on PyTorch (every release before issue 18) in the same run
  single    one image at a time through POST /classify, against the model alone on one image
  baseline  the original app tier: a new Python process per image that loads the model
  cold      30 images through a stack with zero workers, which the autoscaler has to start
plus, on each runtime, a worker's start (time and memory) and each stage's ms per image,
and writes <out>/bench.json and <out>/bench.png. `scaling` times batches of 10, 30 and 100 images
on an elastic stack (from zero workers each time) against one fixed warm worker, and writes
<out>/scaling.json and <out>/scaling.png (the autoscaler's timeline of the elastic 30-image run).
`soak` runs the whole stack for a while under load and injected faults (daas/bench/soak.py).

Raw and service are compared on the same cores. The machine's cores are split: the worker cores
run the N worker processes (and, in turn, the N raw processes); the front cores run what on AWS
runs elsewhere: the local AWS endpoint (S3, SQS and SNS are AWS's CPU there), the web tier (its own
instance there) and this client. N is WORKERS_PER_CORE solo workers per worker core: a solo worker
waits on S3 and SQS for part of each task, and the others compute meanwhile. The same comparison with
every process free to run on every core is reported too ("colocated"). Each process runs
DAAS_INFERENCE_THREADS threads. Baseline and cold run on all cores.

Every stack runs on free ports with its own buckets, queues and state folder, all on one local
AWS endpoint started once for the whole run.
"""
from __future__ import annotations

import io
import json
import math
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import requests

from daas import aws, config, runtimes, state, timeline
from daas.client import ServiceClient
from daas.providers import LocalProvider
from daas.runtimes import export
from daas.stack import PYTHON, Stack, free_port

File = tuple[str, bytes]  # (file name, encoded image)

BATCH = 10                       # images per POST /api/jobs
POLL_S = 0.5                     # how often the client polls each unfinished job, as the web page does
ELASTIC_IDLE_S = 5.0             # idle timeout of autoscaled workers
# Solo workers per worker core in raw and service. Measured on 2 cores (1 worker core), service/raw
# with chunks of 4: 2 per core 0.79, 3 0.87, 4 0.81-0.88, 6 0.81 (medians of 3).
WORKERS_PER_CORE = 4
# Raw and service alternate, ROUNDS runs each, and each reports its median run: on this shared VM
# single runs of the same code gave service/raw from 0.87 to 0.96 within the hour.
ROUNDS = 5
TARGETS = {  # name: (comparison, threshold, unit)
    "service / raw": (">=", 0.9, "×"),
    "service / baseline": (">=", 20.0, "×"),
    "service / PyTorch service": (">=", 2.0, "×"),
    "single − raw (p50)": ("<=", 50.0, "ms"),
    "cold 30 images": ("<=", 10.0, "s"),
    "burst / one upload": (">=", 0.8, "×"),
    "burst AWS calls per image beyond the upload's": ("<=", 3.0, ""),
}
BURST_ROUNDS = 3
# Raw runs on each runtime, and "raw" is the fastest (the honest limit); the service also runs on
# BEFORE, the runtime of every release before issue 18, in the same run (README, Inference runtime).
RAW_RUNTIMES = runtimes.RUNTIMES
BEFORE = "torch"

# -- the images ---------------------------------------------------------------------------------

# (photo bundled with scikit-image, format to re-encode it in, longest side in px or None = as is)
IMAGE_SPECS: list[tuple[str, str, int | None]] = [
    ("coffee.png", "JPEG", None),
    ("chelsea.png", "JPEG", 3000),  # upscaled: a phone-camera-sized JPEG
    ("astronaut.png", "PNG", None),
    ("rocket.jpg", "WEBP", None),
    ("hubble_deep_field.jpg", "JPEG", None),
    ("retina.jpg", "TIFF", None),
    ("motorcycle_left.png", "JPEG", 2000),
    ("camera.png", "BMP", None),    # greyscale
    ("coins.png", "GIF", None),
    ("logo.png", "PNG", None),      # transparent
    ("ihc.png", "WEBP", None),
    ("coffee.png", "GIF", None),
    ("astronaut.png", "JPEG", 3000),
    ("chelsea.png", "BMP", None),
    ("rocket.jpg", "PNG", 1280),
    ("moon.png", "TIFF", None),
    ("motorcycle_left.png", "WEBP", 1200),
    ("horse.png", "PNG", None),
    ("no_time_for_that_tiny.gif", "GIF", None),  # animated, 14×25
    ("coffee.png", "JPEG", 160),
]
# scikit-image's own photos, as shipped: with the images above, what the runtimes must agree on
# (tests/test_runtimes.py, and on a GPU `bench gpu`)
SAMPLE_PHOTOS = ("coffee.png", "chelsea.png", "camera.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "horse.png", "ihc.png", "coins.png", "moon.png", "page.png")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def encode(source: Path, fmt: str, longest: int | None) -> File:
    """One photo re-encoded with Pillow (resized with Lanczos when `longest` is given)."""
    from PIL import Image

    image = Image.open(source)
    if fmt == image.format and longest is None:
        return f"{source.stem}-{image.width}x{image.height}.{EXTENSIONS[fmt]}", source.read_bytes()
    image.load()
    if longest:
        scale = longest / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    if fmt in ("JPEG", "BMP") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt == "GIF" and image.mode == "RGB":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    options = {"JPEG": {"quality": 90}, "WEBP": {"quality": 85}, "TIFF": {"compression": "tiff_deflate"}}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options.get(fmt, {}))
    return f"{source.stem}-{image.width}x{image.height}.{EXTENSIONS[fmt]}", buffer.getvalue()


def build_images(folder: Path) -> list[File]:
    """The distinct test images, also written to `folder` (the baseline reads them from disk)."""
    import skimage

    photos = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, fmt, longest) in enumerate(IMAGE_SPECS):
        file_name, data = encode(photos / name, fmt, longest)
        file_name = f"{i:02d}-{file_name}"
        (folder / file_name).write_bytes(data)
        files.append((file_name, data))
    return files


def cycle(files: list, count: int) -> list:
    return [files[i % len(files)] for i in range(count)]


# -- small helpers --------------------------------------------------------------------------------

def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50, p95, p99 and mean of seconds, in ms by default."""
    import numpy

    return {**{f"p{q}": round(float(numpy.percentile(values, q)) * scale, 2) for q in (50, 95, 99)},
            "mean": round(float(numpy.mean(values)) * scale, 2)}


def wait_until(check: Callable[[], bool], timeout: float, what: str, *, every: float = 0.1,
               tolerate: tuple[type[Exception], ...] = ()) -> None:
    """Poll `check` until it holds; a `tolerate`d exception counts as not yet (a process restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except tolerate:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


def split_cores() -> tuple[set[int], set[int]]:
    """(front cores, worker cores): a third of this process's cores (at least one) for the front.
    In the bench the front (AWS endpoint and web tier) took about half the CPU the workers took."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return set(cores), set(cores)
    front = max(1, len(cores) // 3)
    return set(cores[:front]), set(cores[front:])


@contextmanager
def on_cores(cores: set[int]) -> Iterator[None]:
    """Run this thread, and every process or thread it starts meanwhile, on `cores` only
    (Linux: a child inherits the CPU affinity of the thread that created it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cores_cpu_s(cores: set[int]) -> float:
    """CPU seconds the machine has spent on `cores` so far, in every process and the kernel (Linux's
    /proc/stat: all but idle and iowait)."""
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks += sum(map(int, fields)) - int(fields[3]) - int(fields[4])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine(settings: config.Settings) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "inference_threads": settings.inference_threads, "load_average_at_start": os.getloadavg(),
            **{package: _version(package) for package in ("torch", "celery", "kombu", "moto", "openvino", "onnxruntime")}}


def _version(package: str) -> str | None:
    """The installed version, or None (a lent GPU machine runs `bench gpu` with its own torch only)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@contextmanager
def workspace() -> Iterator[Path]:
    """A temporary folder for one run: removed on success, kept on failure for its logs."""
    tmp = Path(tempfile.mkdtemp(prefix="daas-bench-"))
    try:
        yield tmp
    except BaseException:
        print(f"benchmark failed; logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


# -- stacks on the shared local AWS endpoint ---------------------------------------------------

@contextmanager
def local_aws(tmp: Path) -> Iterator[config.Settings]:
    """The base settings of the run, pointing at a local AWS endpoint started for it (its stacks
    share one model cache, as workers of one AMI do)."""
    base = config.load({**os.environ, "DAAS_PROVIDER": "local", "DAAS_MODEL_CACHE": str(tmp / "models")})
    stack = Stack(base.with_(aws_port=free_port(), state_dir=tmp / "aws"), log_dir=tmp / "aws")
    try:
        stack.start_local_aws()
        yield stack.settings
    finally:
        stack.stop()


def bake_model(base: config.Settings) -> float:
    """Export the network into the run's model cache, as the worker AMI's build does (`daas
    export`), so that no worker's boot in a benchmark pays it, as none does on EC2; the seconds it
    took. (Left to the first worker, the scaling bench's first elastic boot measured 11.7 s where
    the others took 1.3-1.9 s.)"""
    print("export: the model to ONNX for OpenVINO and ONNX Runtime, once…", flush=True)
    started = time.perf_counter()
    export.onnx_file(base)
    return round(time.perf_counter() - started, 2)


@contextmanager
def stack(base: config.Settings, tmp: Path, name: str, **overrides) -> Iterator[tuple[Stack, str]]:
    """A fresh stack (own buckets, queues, state folder) with its web tier: (Stack, web URL)."""
    # Empty bucket and queue names are derived again from the new stack name.
    # SQS queue names take 80 characters, and a worker's pidbox queue holds the stack name twice.
    settings = base.with_(stack=f"bench-{name}-{uuid.uuid4().hex[:6]}", input_bucket="", output_bucket="",
                          queue="", control_queue="", web_port=free_port(), flower_port=free_port(),
                          state_dir=tmp / name, **overrides)
    aws.ensure_resources(settings)
    with Stack(settings, log_dir=settings.state_dir / "logs") as running:
        yield running, running.start_web()


def start_workers(running: Stack, count: int, timeout: float = 180) -> None:
    """Start `count` workers and wait until each has loaded its model and consumes."""
    registered = running.settings.state_dir / "workers"  # where Stack.start_worker registers them
    first = len(running.processes)
    processes = [running.start_worker(f"worker{i}") for i in range(first, first + count)]

    def all_ready() -> bool:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a worker exited while starting (see {running.log_dir})")
        return all((registered / f"{p.pid}.ready").exists() for p in processes)

    wait_until(all_ready, timeout, f"{count} workers to start")


@contextmanager
def elastic_stack(base: config.Settings, tmp: Path, name: str) -> Iterator[tuple[Stack, str]]:
    """A stack with zero workers, the autoscaler ticking every second, workers idling out after 5 s."""
    with stack(base, tmp, name, scale_min=0, scale_interval=1.0, idle_timeout=ELASTIC_IDLE_S,
               visibility_timeout=int(ELASTIC_IDLE_S)) as (running, url):  # workers idle out no sooner
        running.start_controller()
        wait_until(lambda: bool(timeline.read(running.settings.state_dir)), 120, "the autoscaler's first tick")
        yield running, url


def wait_for_zero_workers(settings: config.Settings, timeout: float = 120) -> None:
    provider = LocalProvider(settings)
    wait_until(lambda: provider.counts() == (0, 0), timeout, "the workers to idle out")


# -- the shared measurement: submit images, wait for every label -----------------------------------

@dataclass
class Run:
    started: float          # time() just before the first upload
    first_label: float      # time() the first result was written
    finished: float         # time() the last result was written (its finished_at)
    latencies: list[float]  # per image: seconds from the start of its upload to its result being written
    results: list[dict]

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def images_per_s(self) -> float:
        """End to end: from the first upload to the last label."""
        return len(self.results) / self.seconds

    @property
    def steady_images_per_s(self) -> float:
        """Labels per second once the pipeline is full: from the first label to the last. Filling
        it (the first upload request, the first task) is latency, which p50/p95 report."""
        if len(self.results) < 2 or self.finished <= self.first_label:
            return self.images_per_s  # one label (or one instant) has no steady state
        return (len(self.results) - 1) / (self.finished - self.first_label)


def classify_all(url: str, files: list[File], batch: int = BATCH, poll: float = POLL_S,
                 timeout: float = 600) -> Run:
    """Upload `files` in batches (one thread) while polling every unfinished job (this thread).

    Times come from the results' own `finished_at` (ms, same clock), so the client can poll as
    gently as a browser does: a client polling at 20 Hz would steal CPU from the workers it measures.
    """
    uploaded: queue.Queue = queue.Queue()

    def upload() -> None:
        client = ServiceClient(url)
        for start in range(0, len(files), batch):
            sent = time.time()
            try:
                uploaded.put((client.submit(files[start:start + batch])["job_id"], sent))
            except Exception as exc:  # noqa: BLE001 (handed to the polling thread, which raises it)
                uploaded.put(exc)
                return

    expected_jobs = math.ceil(len(files) / batch)
    started = time.time()
    threading.Thread(target=upload, daemon=True).start()
    client, pending, jobs_seen = ServiceClient(url), {}, 0
    seen: set[str] = set()
    latencies, results, finished, first_label = [], [], started, math.inf
    deadline = started + timeout
    while jobs_seen < expected_jobs or pending:
        while not uploaded.empty():
            item = uploaded.get()
            if isinstance(item, Exception):
                raise item
            pending[item[0]], jobs_seen = item[1], jobs_seen + 1
        for job_id, sent in list(pending.items()):
            job = client.job(job_id)
            for image in job["images"]:
                if image["status"] != "queued" and image["id"] not in seen:
                    seen.add(image["id"])
                    written = datetime.fromisoformat(image["finished_at"]).timestamp()
                    latencies.append(written - sent)
                    results.append(image)
                    finished, first_label = max(finished, written), min(first_label, written)
            if job["status"] == "done":
                del pending[job_id]
        if time.time() > deadline:
            raise TimeoutError(f"{len(results)} of {len(files)} images labelled after {timeout:.0f} s")
        time.sleep(poll)
    failed = [f"{r['name']}: {r['error']}" for r in results if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed: {'; '.join(failed[:5])}")
    return Run(started, first_label, finished, latencies, results)


# -- raw: the model alone, in the workers' process and thread layout --------------------------

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


# -- service and single: through the web tier with warm workers -----------------------------------

def service_run(url: str, files: list[File], count: int) -> dict:
    """images/s and latency of `count` images through the web tier (workers already warm)."""
    run = classify_all(url, cycle(files, count))
    stages = {}
    for result in run.results:
        for stage, ms in result["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    return {"images": count, "batch": BATCH, "seconds": round(run.seconds, 3),
            "images_per_s": round(run.steady_images_per_s, 3),
            "end_to_end_images_per_s": round(run.images_per_s, 3),
            "first_label_s": round(run.first_label - run.started, 3), "latency_ms": percentiles(run.latencies),
            "stages_mean_ms": {stage: round(sum(v) / len(v), 2) for stage, v in stages.items()},
            "latencies_ms": [round(t * 1000, 1) for t in run.latencies]}


def median_run(runs: list[dict]) -> dict:
    """The run with the median images/s, with every run's images/s beside it."""
    middle = sorted(runs, key=lambda run: run["images_per_s"])[len(runs) // 2]
    return {**middle, "images_per_s_runs": [run["images_per_s"] for run in runs]}


def single_mode(url: str, files: list[File], count: int) -> dict:
    """POST /classify one image at a time (the original synchronous contract)."""
    http = requests.Session()

    def classify(name: str, data: bytes) -> float:
        started = time.perf_counter()
        response = http.post(f"{url}/classify", files={"myfile": (name, data)}, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"/classify {name}: {response.status_code} {response.text.strip()}")
        return time.perf_counter() - started

    classify(*files[0])  # warm-up
    latencies = [classify(name, data) for name, data in cycle(files, count)]
    return {"images": count, "latency_ms": percentiles(latencies),
            "latencies_ms": [round(t * 1000, 2) for t in latencies]}


# -- burst: the original client's pattern, beside the same images as one upload --------------------

BURST = 100  # concurrent POST /classify, one image each, as the original load generator sent them
# One line of the local endpoint's access log (daas.serving.AWS_ACCESS_LOG_FORMAT).
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" \d+ \S+ \S+ "(?P<target>[^"]*)" "(?P<agent>[^"]*)"')


def aws_requests(log: Path, since: int) -> Counter:
    """The AWS calls logged by the local endpoint after byte `since` of its log, by caller and
    operation: ("web", "AmazonSQS.SendMessage"), ("worker", "s3 GET"), ("kombu", ...)."""
    counts: Counter = Counter()
    with open(log, "rb") as handle:
        handle.seek(since)
        for line in handle.read().decode(errors="replace").splitlines():
            match = _ACCESS_LINE.search(line)
            if not match:
                continue
            role = re.search(r"daas/(\w+)", match["agent"])
            operation = match["target"] if match["target"] != "-" else (
                f"s3 {match['method']}" if match["path"] != "/" else "query POST (SNS, EC2)")
            counts[(role[1] if role else "kombu", operation)] += 1
    return counts


def _per_image(counts: Counter, images: int) -> dict:
    return {"per_image": round(sum(counts.values()) / images, 2),
            "by_operation": {f"{role} {op}": round(n / images, 3) for (role, op), n in counts.most_common()}}


def burst_mode(url: str, files: list[File], log: Path, count: int = BURST) -> dict:
    """`count` threads, each POSTing one image to /classify at once; images/s from the first
    request to the last answer, and the AWS calls per image."""
    since = log.stat().st_size

    def classify(file: File) -> float:
        started = time.perf_counter()
        response = requests.post(f"{url}/classify", files={"myfile": file}, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"/classify {file[0]}: {response.status_code} {response.text.strip()}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(classify, cycle(files, count)))
    seconds = time.perf_counter() - started
    time.sleep(1)  # the workers' last deletes and events reach the log
    return {"images": count, "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 3),
            "latency_ms": percentiles(latencies), "aws_requests": _per_image(aws_requests(log, since), count)}


def one_upload_mode(url: str, files: list[File], log: Path, count: int = BURST) -> dict:
    """The same images as one POST /api/jobs, followed as the web page does: images/s from the
    upload to the last label, and the AWS calls per image."""
    since = log.stat().st_size
    run = classify_all(url, cycle(files, count), batch=count)
    time.sleep(1)
    return {"images": count, "seconds": round(run.seconds, 3), "images_per_s": round(run.images_per_s, 3),
            "latency_ms": percentiles(run.latencies), "aws_requests": _per_image(aws_requests(log, since), count)}


def raw_and_service(base: config.Settings, tmp: Path, name: str, files: list[File], count: int,
                    workers: int, cores: set[int], single: int = 0, burst: int = BURST,
                    rounds: int = ROUNDS, compare: bool = False) -> dict:
    """Raw and service in turn, `rounds` times each, with `workers` processes on `cores` (the raw
    processes idle while the workers run, and the other way round); then single, when asked.
    Each mode reports its median run.

    With `compare`, raw runs on every runtime (RAW_RUNTIMES) and "raw" is the fastest of them (the
    honest limit), and a second stack on PyTorch (the runtime before issue 18) runs its service
    beside ours. The steps of a round run in one order and the next round's in the reverse (ABBA):
    this VM's speed drifts by 1.3-1.6× between identical runs."""
    settings = base.with_(scale_max=workers)
    default = runtimes.resolve(settings)[0]
    raw_runtimes = RAW_RUNTIMES if compare else (default,)
    service_runtimes = tuple(dict.fromkeys((default, BEFORE))) if compare else (default,)
    with ExitStack() as context:
        print(f"{name}: {workers} raw processes per runtime ({', '.join(raw_runtimes)}) and {workers} workers "
              f"per service ({', '.join(service_runtimes)}) on cores {sorted(cores)}…", flush=True)
        pools, urls = {}, {}
        with on_cores(cores):
            for runtime in raw_runtimes:
                pools[runtime] = context.enter_context(raw_pool(settings.with_(runtime=runtime), files))
        for runtime in service_runtimes:
            running, urls[runtime] = context.enter_context(
                stack(base, tmp, name if runtime == default else f"{name}-pt", idle_timeout=0, scale_max=workers,
                      runtime=runtime))
            with on_cores(cores):
                start_workers(running, workers)
            classify_all(urls[runtime], cycle(files, 2 * workers * settings.images_per_task))  # warm-up: a few tasks each
        steps = [("raw", runtime) for runtime in raw_runtimes] + [("service", runtime) for runtime in service_runtimes]
        runs: dict[tuple[str, str], list[dict]] = {step: [] for step in steps}
        for round_ in range(1, rounds + 1):
            order = steps if round_ % 2 else steps[::-1]
            print(f"{name}: round {round_} of {rounds}: {', '.join(f'{k} ({r})' for k, r in order)}, "
                  f"{count} images each…", flush=True)
            for kind, runtime in order:
                cpu = cores_cpu_s(cores)
                run = raw_run(pools[runtime], files, count) if kind == "raw" else service_run(urls[runtime], files, count)
                # Split, the worker cores run nothing else: their CPU per image is the workers' (or raw's)
                # own cost. Colocated, it is everything's, the endpoint and web tier included.
                run["cores_cpu_ms_per_image"] = round((cores_cpu_s(cores) - cpu) * 1000 / count, 2)
                runs[(kind, runtime)].append(run)
        raws = {runtime: {"processes": workers, "runtime": runtime, **median_run(runs[("raw", runtime)])}
                for runtime in raw_runtimes}
        modes = {"raw": max(raws.values(), key=lambda mode: mode["images_per_s"]),
                 "service": {"workers": workers, "runtime": default, **median_run(runs[("service", default)])}}
        if compare:
            modes["raw_runtimes"] = raws
            modes["service_before"] = {"workers": workers, "runtime": BEFORE, **median_run(runs[("service", BEFORE)])}
        if single:
            pool, url = pools[modes["raw"]["runtime"]], urls[default]
            print(f"{name}: single, {single} images through /classify and raw…", flush=True)
            modes["raw"]["single"] = raw_single(pool, files, single)
            modes["single"] = single_mode(url, files, single)
            log = tmp / "aws" / "aws.log"  # the local endpoint's access log (see local_aws)
            print(f"{name}: {burst} concurrent /classify, then the same images as one upload, in turn…", flush=True)
            bursts, uploads = [], []
            for _ in range(max(1, rounds * BURST_ROUNDS // ROUNDS)):
                bursts.append(burst_mode(url, files, log, burst))
                uploads.append(one_upload_mode(url, files, log, burst))
            modes["burst"], modes["one_upload"] = median_run(bursts), median_run(uploads)
    return modes


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


# -- stages: where a worker's CPU goes per image ------------------------------------------------

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


# -- `bench` (all) ---------------------------------------------------------------------------

def service_over_raw(modes: dict) -> float:
    return round(modes["service"]["images_per_s"] / modes["raw"]["images_per_s"], 3)


def ratios(modes: dict) -> dict[str, float]:
    return {
        "service / raw": service_over_raw(modes),
        "service / baseline": round(modes["service"]["images_per_s"] / modes["baseline"]["images_per_s"], 1),
        "service / PyTorch service": round(modes["service"]["images_per_s"] / modes["service_before"]["images_per_s"], 2),
        "single − raw (p50)": round(modes["single"]["latency_ms"]["p50"]
                                    - modes["raw"]["single"]["latency_ms"]["p50"], 1),
        "cold 30 images": modes["cold"]["seconds"],
        "service / raw, colocated": service_over_raw(modes["colocated"]),
        "burst / one upload": round(modes["burst"]["images_per_s"] / modes["one_upload"]["images_per_s"], 3),
        "burst AWS calls per image beyond the upload's": round(
            modes["burst"]["aws_requests"]["per_image"] - modes["one_upload"]["aws_requests"]["per_image"], 2),
    }


def judge(figures: dict[str, float]) -> list[dict]:
    checks = []
    for name, (op, threshold, unit) in TARGETS.items():  # the colocated ratio is reported, not judged
        value = figures[name]
        met = value >= threshold if op == ">=" else value <= threshold
        checks.append({"name": name, "value": value, "target": f"{'≥' if op == '>=' else '≤'} {threshold:g} {unit}",
                       "met": met})
    return checks


def run_all(out: Path, count: int = 120, *, workers: int | None = None, single: int | None = None,
            baseline_sample: int = 5, cold_images: int = 30, burst: int = BURST, rounds: int = ROUNDS) -> dict:
    """Every mode of `bench` on `count` images; writes <out>/bench.json and <out>/bench.png.
    `workers`: processes of raw and service (default: WORKERS_PER_CORE per worker core)."""
    out.mkdir(parents=True, exist_ok=True)
    single = single or min(count, 30)
    front, back = split_cores()
    everywhere = front | back
    workers = workers or WORKERS_PER_CORE * len(back)
    with workspace() as tmp, on_cores(front):
        files = build_images(tmp / "images")
        with local_aws(tmp) as base:
            report = {"machine": machine(base), "settings": {
                "workers": workers, "front_cores": sorted(front), "worker_cores": sorted(back),
                "inference_threads": base.inference_threads, "events": base.events,
                "runtime": runtimes.resolve(base)[0], "precision": base.precision,
                "prefetch_multiplier": base.prefetch_multiplier, "batch": BATCH, "poll_s": POLL_S,
                "cold": {"workers_max": base.scale_max, "scale_interval_s": 1.0, "idle_timeout_s": ELASTIC_IDLE_S},
                "images": count, "distinct_images": [{"name": n, "bytes": len(d)} for n, d in files]}}
            export_s = bake_model(base)
            with on_cores(back):
                print("stages and boot: per-image stages and a worker's start on each runtime…", flush=True)
                stages = stages_mode(base, files)
                boots = boot_mode(base, tmp / "images" / files[0][0])
            modes = raw_and_service(base, tmp, "service", files, count, workers, back, single, burst, rounds,
                                    compare=True)
            modes["stages"], modes["boot"], modes["export_s"] = stages, boots, export_s
            modes["colocated"] = raw_and_service(base, tmp, "colocated", files, count, workers, everywhere,
                                                 rounds=rounds)
            with on_cores(everywhere):
                print(f"baseline: {baseline_sample} processes, one per image…", flush=True)
                modes["baseline"] = baseline_mode(base, tmp / "images", files, baseline_sample)
                print(f"cold: {cold_images} images from zero workers…", flush=True)
                modes["cold"] = cold_mode(base, tmp, files, cold_images)
        report["modes"] = modes
        report["ratios"] = ratios(modes)
        report["targets"] = judge(report["ratios"])
        report["machine"]["load_average_at_end"] = os.getloadavg()
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot_bench(report, out / "bench.png")
    return report


def _ms(figures: dict) -> tuple[str, str]:
    return f"{figures['p50']:.0f}", f"{figures['p95']:.0f}"


def _runs(mode: dict) -> str:
    return "/".join(f"{rate:.1f}" for rate in mode["images_per_s_runs"])


def _row(label: str, rate: str = "", p50: str = "", p95: str = "", note: str = "") -> str:
    return f"{label:<42}{rate:>10}{p50:>10}{p95:>10}{note}"


def format_report(report: dict) -> str:
    m, s, modes = report["machine"], report["settings"], report["modes"]
    raw, service, single, baseline, cold = (modes[k] for k in ("raw", "service", "single", "baseline", "cold"))
    colocated = modes["colocated"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in service["stages_mean_ms"].items())
    worker_cores = f"worker core(s) {','.join(map(str, s['worker_cores']))}"
    lines = [
        (f"{m['cpu']} ({m['cores']} cores), {m['inference_threads']} inference thread(s) per process, "
         f"service runtime {s['runtime']} (precision {s['precision']}), "
         + ", ".join(f"{name} {m[name]}" for name in ("openvino", "onnxruntime", "torch", "celery", "kombu"))),
        (f"{s['images']} images ({len(s['distinct_images'])} distinct), {s['workers']} worker processes on "
         f"{worker_cores}; AWS endpoint, web tier and client on core(s) {','.join(map(str, s['front_cores']))}"),
        "",
        _row("mode", "images/s", "p50 ms", "p95 ms"),
        *(_row(f"raw on {name}: model alone, {mode['processes']} processes", f"{mode['images_per_s']:.2f}",
               *_ms(mode["busy_ms_per_image"]), "  (the fastest: raw)" if mode is raw else "")
          for name, mode in modes["raw_runtimes"].items()),
        _row("raw: one image at a time", "", *_ms(raw["single"]["latency_ms"])),
        _row(f"service: API, {service['workers']} warm workers", f"{service['images_per_s']:.2f}",
             *_ms(service["latency_ms"]), f"  (end to end {service['end_to_end_images_per_s']:.2f}/s, "
                                          f"first label {service['first_label_s']:.2f} s)"),
        _row(f"service on {modes['service_before']['runtime']} (before issue 18)",
             f"{modes['service_before']['images_per_s']:.2f}", *_ms(modes["service_before"]["latency_ms"])),
        _row("single: POST /classify, one at a time", "", *_ms(single["latency_ms"])),
        _row(f"burst: {modes['burst']['images']} concurrent POST /classify", f"{modes['burst']['images_per_s']:.2f}",
             *_ms(modes["burst"]["latency_ms"]), f"  ({modes['burst']['aws_requests']['per_image']} AWS calls/image)"),
        _row(f"one upload: the same {modes['one_upload']['images']} images", f"{modes['one_upload']['images_per_s']:.2f}",
             *_ms(modes["one_upload"]["latency_ms"]),
             f"  ({modes['one_upload']['aws_requests']['per_image']} AWS calls/image)"),
        _row("colocated raw: on all cores", f"{colocated['raw']['images_per_s']:.2f}",
             *_ms(colocated["raw"]["busy_ms_per_image"])),
        _row("colocated service: everything on all cores", f"{colocated['service']['images_per_s']:.2f}",
             *_ms(colocated["service"]["latency_ms"])),
        _row("baseline: a process per image", f"{baseline['images_per_s']:.3f}", f"{baseline['mean_s'] * 1000:.0f}"),
        _row(f"cold: {cold['images']} images from zero workers", f"{cold['images_per_s']:.2f}", "", "",
             f"  ({cold['seconds']:.1f} s, first label {cold['first_label_s']:.1f} s)"),
        f"service stages, mean ms per image: {stages}",
        f"CPU of the worker cores per image (median run): raw {raw['cores_cpu_ms_per_image']:.2f} ms, "
        f"service {service['cores_cpu_ms_per_image']:.2f} ms",
        "stages in one process, mean ms per image: " + ", ".join(f"{k} {v:g}" for k, v in modes["stages"].items()),
        "worker start (load the model, label one image; median): " + ", ".join(
            f"{name} {b['seconds']:.2f} s, {b['resting_rss_mb']} MB{' (imports torch)' if b['torch_imported'] else ''}"
            for name, b in modes["boot"].items()) + f"; the export, once: {modes['export_s']:.1f} s",
        ("runs in turn (images/s; the medians above): "
         + ", ".join(f"raw {name} {_runs(mode)}" for name, mode in modes["raw_runtimes"].items())
         + f", service {_runs(service)}, service {modes['service_before']['runtime']} {_runs(modes['service_before'])}; "
         f"colocated raw {_runs(colocated['raw'])}, service {_runs(colocated['service'])}"),
        "",
        f"{'figure':<46}{'value':>11}  {'target':<12}",
    ]
    units = {"service / raw": "×", "service / baseline": "×", "service / PyTorch service": "×", "single − raw (p50)": " ms", "cold 30 images": " s",
             "service / raw, colocated": "×", "burst / one upload": "×", "burst AWS calls per image beyond the upload's": ""}
    checks = {check["name"]: check for check in report["targets"]}
    for name, value in report["ratios"].items():
        check = checks.get(name)
        target, verdict = (check["target"], "met" if check["met"] else "NOT met") if check else ("", "(reported)")
        lines.append(f"{name:<46}{f'{value:g}{units[name]}':>11}  {target:<12}{verdict}")
    return "\n".join(lines)


def plot_bench(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["modes"]
    fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(15, 4.8), width_ratios=(4, 2))
    colocated = modes["colocated"]
    names = [f"raw\n{modes['raw']['runtime']}", f"service\n{modes['service']['runtime']}",
             f"service\n{modes['service_before']['runtime']}",
             f"burst\n{modes['burst']['images']} ×\n/classify", f"one upload\n{modes['one_upload']['images']}\nimages",
             "raw\ncolocated", "service\ncolocated", f"cold\n{modes['cold']['images']} from 0",
             "baseline\n1 process\nper image"]
    rates = [modes["raw"]["images_per_s"], modes["service"]["images_per_s"], modes["service_before"]["images_per_s"],
             modes["burst"]["images_per_s"],
             modes["one_upload"]["images_per_s"], colocated["raw"]["images_per_s"],
             colocated["service"]["images_per_s"], modes["cold"]["images_per_s"], modes["baseline"]["images_per_s"]]
    bars = rate_ax.bar(names, rates, color=["tab:gray", "tab:blue", "tab:orange", "tab:purple", "plum", "silver", "lightsteelblue",
                                            "tab:cyan", "tab:red"])
    rate_ax.bar_label(bars, fmt="%.2f")
    rate_ax.set_ylabel("images / s")
    rate_ax.set_title("throughput")

    groups = [("raw, 1 image", modes["raw"]["single"]["latency_ms"]),
              ("single\n/classify", modes["single"]["latency_ms"]),
              (f"service\nupload→label ({modes['service']['images']})", modes["service"]["latency_ms"])]
    x = range(len(groups))
    width = 0.38
    for offset, key, color in ((-width / 2, "p50", "tab:blue"), (width / 2, "p95", "tab:orange")):
        bars = latency_ax.bar([i + offset for i in x], [g[1][key] for g in groups], width, label=key, color=color)
        latency_ax.bar_label(bars, fmt="%.0f", fontsize=8)
    latency_ax.set_xticks(list(x), [g[0] for g in groups])
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("ms (log scale)")
    latency_ax.set_title("latency percentiles")
    latency_ax.legend()
    m = report["machine"]
    fig.suptitle(f"daas bench: {m['cpu']}, {m['cores']} cores, runtime {report['settings']['runtime']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- `bench scaling` ------------------------------------------------------------------------

def run_scaling(out: Path, sizes: tuple[int, ...] = (10, 30, 100), plot_size: int = 30) -> dict:
    """Elastic (0..N workers, from zero each time) against one fixed warm worker, per batch size."""
    out.mkdir(parents=True, exist_ok=True)
    with workspace() as tmp:
        files = build_images(tmp / "images")
        with local_aws(tmp) as base:
            bake_model(base)
            report = {"machine": machine(base), "settings": {
                "elastic": {"min": 0, "max": base.scale_max, "scale_interval_s": 1.0, "idle_timeout_s": ELASTIC_IDLE_S},
                "fixed_workers": 1, "inference_threads": base.inference_threads, "events": base.events,
                "batch": BATCH, "poll_s": POLL_S}}
            elastic, records = {}, []
            with elastic_stack(base, tmp, "elastic") as (running, url):
                for size in sizes:
                    print(f"elastic: {size} images from zero workers…", flush=True)
                    elastic[size] = elastic_run(running, url, cycle(files, size))
                    if size == plot_size:  # its timeline, until the workers are gone again
                        wait_for_zero_workers(running.settings)
                        records = timeline.read(running.settings.state_dir, since=elastic[size]["since"])
                    elastic[size].pop("since")
                # What the controller watched: each worker's launch to its first heartbeat (daas.observed)
                report["observed_boots_s"] = state.read_json(running.settings.state_dir / "scaling.json", {}).get("boots", [])
            fixed = {}
            with stack(base, tmp, "fixed", idle_timeout=0) as (running, url):
                start_workers(running, 1)
                classify_all(url, files[:2])  # warm-up
                for size in sizes:
                    print(f"fixed: {size} images, one warm worker…", flush=True)
                    run = classify_all(url, cycle(files, size))
                    fixed[size] = {"images": size, "seconds": round(run.seconds, 3),
                                   "images_per_s": round(run.images_per_s, 3)}
        report["runs"] = [{"images": size, "elastic": elastic[size], "fixed": fixed[size]} for size in sizes]
        report["timeline"] = records
        report["machine"]["load_average_at_end"] = os.getloadavg()
    (out / "scaling.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if records:
        timeline.plot(records, out / "scaling.png", title=f"daas autoscaling: {plot_size} images from zero workers")
    return report


def format_scaling(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"{m['cpu']} ({m['cores']} cores), {m['inference_threads']} inference thread(s) per worker",
             "",
             (f"{'images':>7}  {'elastic 0→' + str(s['elastic']['max']) + ' workers':>22}"
              f"  {'fixed: 1 warm worker':>22}  {'peak workers':>12}")]
    for run in report["runs"]:
        e, f = run["elastic"], run["fixed"]
        lines.append(f"{run['images']:>7}  {e['seconds']:>8.1f} s ({e['images_per_s']:>5.1f}/s)"
                     f"  {f['seconds']:>8.1f} s ({f['images_per_s']:>5.1f}/s)  {e['peak_workers']:>12}")
    return "\n".join(lines)


def main(args) -> int:
    out = Path(args.out)
    if args.which == "soak":
        from daas.bench import soak

        report = soak.run(out, minutes=args.minutes)
        print(soak.format_report(report))
        print(f"\nwrote {out / 'soak.json'} and {out / 'soak.png'}")
        return 0 if soak.passed(report) else 1
    if args.which == "batch":
        from daas.bench import batch

        report = batch.run(out)
        print(batch.format_report(report))
        print(f"\nwrote {out / 'batch.json'}")
        return 0
    if args.which == "gpu":
        from daas.bench import gpu

        report = gpu.run(out)
        print(gpu.format_report(report))
        print(f"\nwrote {out / 'gpu.json'}")
        return 0
    if args.which == "simulate":
        from daas.bench import simulate

        report = simulate.run(out, simulate.worker_rate(out), scaling_report=simulate.scaling_report(out))
        print(simulate.format_report(report))
        print(f"\nwrote {out / 'simulate.json'} and {out / 'simulate.png'}")
        return 0
    if args.which == "scaling":
        report = run_scaling(out)
        print(format_scaling(report))
        print(f"\nwrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    else:
        report = run_all(out, args.images)
        print(format_report(report))
        print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
