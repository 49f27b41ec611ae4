"""The classification worker's life: load the model once, classify, power off when idle.

`python -m daas worker` runs a Celery worker on the classify queue. Each worker process loads
the model when it starts (worker_process_init fires in the solo pool and in prefork children),
before it takes its first task. After `idle_timeout` seconds with nothing active or reserved it
stops consuming, shuts down warm and runs the configured power-off command.
"""
from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

from celery import bootsteps, signals
from celery.worker import state as worker_state

from daas import config, images, results, storage
from daas.broker import LONG_POLL_SECONDS
from daas.celery_app import app

log = logging.getLogger(__name__)
_classifier = None
_idle_exit = False


def classifier():
    """The process's model, loaded on first use (normally at process start, see _warm_up)."""
    global _classifier
    if _classifier is None:
        from daas.model import Classifier, configure_process

        cfg = config.load()
        configure_process(cfg.torch_threads)
        started = time.perf_counter()
        _classifier = Classifier(cfg.model, cfg.model_weights, cfg.device)
        log.info("loaded %s on %s in %.2f s", cfg.model, _classifier.device, time.perf_counter() - started)
    return _classifier


def classify_chunk(cfg: config.Settings, job_id: str, chunk: list[list[str]], batch: int = 0) -> list[dict]:
    """The result document of each image of a chunk ([image_id, name] pairs), in order.

    The chunk's images are fetched first, back to back, then decoded and classified `batch` at a
    time: by default one at a time on CPU (measured: batch 1 is the fastest per image there), and
    the whole chunk in one forward pass on a GPU, where batching pays. Back to back, an S3 GET cost
    a worker 2.1 ms of CPU, against 2.4-2.5 ms between two forward passes (botocore's code stays in
    the CPU's caches).
    """
    fetched = [fetch(cfg, job_id, image_id) for image_id, _ in chunk]
    batch = batch or (len(chunk) if classifier().device.type == "cuda" else 1)
    return [result for start in range(0, len(chunk), batch)
            for result in classify_batch(cfg, job_id, chunk[start:start + batch], fetched[start:start + batch])]


def fetch(cfg: config.Settings, job_id: str, image_id: str) -> tuple[bytes, float]:
    """An uploaded image's bytes, and the milliseconds it took to get them."""
    started = time.perf_counter()
    data = storage.get_image(cfg, storage.image_key(job_id, image_id))
    return data, (time.perf_counter() - started) * 1000


def classify_batch(cfg: config.Settings, job_id: str, batch: list[list[str]],
                   fetched: list[tuple[bytes, float]]) -> list[dict]:
    """Decode each fetched image and classify the decodable ones in one forward pass: a result for
    each (an error result for bad input). Each result carries its own fetch and decode times and
    its share of the forward pass."""
    model, documents, decoded = classifier(), {}, []  # decoded: (image_id, name, image, timings)
    for (image_id, name), (data, fetch_ms) in zip(batch, fetched):
        started = time.perf_counter()
        try:
            image = images.decode(data, cfg.max_image_pixels, draft_size=images.WORKER_DRAFT_SIZE)
        except images.BadImage as exc:
            documents[image_id] = results.error(job_id, image_id, name, str(exc))
            continue
        decoded.append((image_id, name, image, {"fetch": fetch_ms, "decode": (time.perf_counter() - started) * 1000}))
    if decoded:
        started = time.perf_counter()
        predictions = model.classify([image for _, _, image, _ in decoded])
        share = (time.perf_counter() - started) * 1000 / len(decoded)
        for (image_id, name, _, timings), prediction in zip(decoded, predictions):
            documents[image_id] = results.done(job_id, image_id, name, prediction, model.name,
                                               socket.gethostname(), {**timings, "forward": share})
    return [documents[image_id] for image_id, _ in batch]


class IdleShutdown(bootsteps.StartStopStep):
    """Consumer bootstep: after `idle_timeout` idle seconds, stop consuming, then shut down warm.

    Two phases, because a long poll may be in flight when the consumer is cancelled: SQS may
    already have handed it a message. kombu makes such messages visible again when the poll
    returns, which it must be allowed to do: the worker stops only once the poll is over.
    Stopping at once would leave the message invisible for the whole visibility timeout.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timeout = config.load().idle_timeout
        self.last_busy = time.monotonic()
        self.cancelled_at: float | None = None
        self.timer_ref = None

    def start(self, consumer) -> None:
        self.last_busy = time.monotonic()
        # The solo pool runs each task inside the event loop, so `check` never sees one active:
        # every finished task counts as activity too.
        signals.task_postrun.connect(self.busy, weak=False)
        self.timer_ref = consumer.timer.call_repeatedly(min(1.0, self.timeout / 4), self.check, (consumer,))

    def busy(self, **_) -> None:
        self.last_busy = time.monotonic()

    def check(self, consumer) -> None:
        global _idle_exit
        now = time.monotonic()
        if self.cancelled_at is None:
            if worker_state.active_requests or worker_state.reserved_requests:
                self.last_busy = now
            elif now - self.last_busy >= self.timeout:
                log.info("idle for %.0f s: no longer consuming; shutting down once the last poll is over",
                         self.timeout)
                for queue in consumer.task_consumer.queues:
                    consumer.cancel_task_queue(queue.name)
                self.cancelled_at = now
        elif now - self.cancelled_at > LONG_POLL_SECONDS + 1 and not worker_state.active_requests:
            _idle_exit = True
            worker_state.should_stop = 0  # the normal warm-shutdown path, exit code 0

    def stop(self, consumer) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()


def _warm_up(**_) -> None:
    """Make the process ready before it takes its first task: load the model and run it once (the
    first forward pass costs several later ones), and build the S3 client (botocore parses its
    service model then). Measured: a worker's first task cost 150-190 ms of CPU per image without
    this, 35-50 ms with it."""
    from PIL import Image

    cfg = config.load()
    classifier().classify([Image.new("RGB", (256, 256))])
    storage.warm_up(cfg)


def run(register_in: str | None = None) -> int:
    """Run a classification worker until it is stopped or goes idle; then maybe power off."""
    cfg = config.load()
    signals.worker_process_init.connect(_warm_up, weak=False)
    if register_in:
        # Local workers register as files: `<pid>` while starting, plus `<pid>.ready` once
        # consuming (see daas.providers.LocalProvider, which counts them).
        folder = Path(register_in)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).touch()
        signals.worker_ready.connect(lambda **_: (folder / f"{os.getpid()}.ready").touch(), weak=False)
    if cfg.idle_timeout > 0:
        app.steps["consumer"].add(IdleShutdown)
    pool = "solo" if cfg.worker_concurrency == 1 else "prefork"
    argv = ["worker", "--queues", cfg.queue, "--pool", pool, "--concurrency", str(cfg.worker_concurrency),
            "--hostname", f"{cfg.stack}-worker-{os.getpid()}@{socket.gethostname()}",
            "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    argv.append("--task-events" if cfg.events else "--without-heartbeat")
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        code = exit_.code or 0
    else:
        code = 0
    if _idle_exit and cfg.poweroff_command:
        log.info("powering off: %s", cfg.poweroff_command)
        subprocess.run(shlex.split(cfg.poweroff_command), check=False)
    return int(code)
