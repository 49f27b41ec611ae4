"""The stacks a benchmark starts on its own local AWS endpoint: a fresh stack each, warm workers
or an elastic one the autoscaler fills from zero."""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daas import aws, config, timeline
from daas.bench.harness import wait_until
from daas.providers import LocalProvider
from daas.runtimes import export
from daas.stack import Stack, free_port


ELASTIC_IDLE_S = 5.0  # idle timeout of autoscaled workers


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
