"""What every benchmark shares: its workspace, the machine it ran on, the split of the cores and
waits, percentiles; the runtimes compared and the workers per core."""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from daas import config, runtimes


# Solo workers per worker core in raw and service. Measured on 2 cores (1 worker core), service/raw
# with chunks of 4: 2 per core 0.79, 3 0.87, 4 0.81-0.88, 6 0.81 (medians of 3).
WORKERS_PER_CORE = 4
# Raw runs on each runtime, and "raw" is the fastest (the honest limit); the service also runs on
# BEFORE, the runtime of every release before issue 18, in the same run (README, Inference runtime).
RAW_RUNTIMES = runtimes.RUNTIMES
BEFORE = "torch"


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
