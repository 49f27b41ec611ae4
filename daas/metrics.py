"""Prometheus metrics of the web tier (`GET /metrics`), safe under gunicorn's worker processes.

Each gunicorn worker process counts into files of its own in a folder named by
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode); `/metrics` adds them up, so the
answer is the same whichever process serves it. daas.serving.prepare_metrics_folder makes and empties
that folder before this module (and prometheus_client) is first imported: `daas web` calls it first.
The web tier sees every image's result (the worker sends each chunk's results to the reply queue of
the web process that submitted it, daas.replies): that is where the classified counts and the
per-stage histograms come from. Queue depth and workers come from the autoscaler's latest tick
(daas.health), read at most every METRICS_TICK_CACHE seconds.

The controller serves its own (`CONTROLLER`, on DAAS_HOST:DAAS_CONTROLLER_METRICS_PORT, one process):
launches and refusals, images given up on from the dead-letter queue, batches' listing and
outcomes, callbacks, and the same tick gauges.
"""
from __future__ import annotations

import os
import time

import logging

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest,
                               start_http_server)
from prometheus_client.core import GaugeMetricFamily

from daas import config, health

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
# Seconds: a forward pass on CPU is a few ms, a fetch from S3 tens of ms, a decode up to a second.
# The queue wait: up to minutes while workers boot.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0)

requests_total = Counter("daas_http_requests", "HTTP requests answered, by route, method and status",
                         ["route", "method", "status"])
images_accepted = Counter("daas_images_accepted", "images accepted for classification (queued)")
images_classified = Counter("daas_images_classified", "images with a result, by outcome (done: a label; "
                            "error: a per-image error such as a damaged file)", ["outcome"])
image_stage_seconds = Histogram("daas_image_stage_seconds", "seconds per image in each stage from upload to "
                                "label: queue (its chunk's wait for a worker), fetch from S3, decode, forward "
                                "pass, store (its share of the results' PUT), from each result's timings",
                                ["stage"], buckets=STAGE_BUCKETS)


CONTROLLER = CollectorRegistry(auto_describe=True)
workers_launched = Counter("daas_workers_launched", "workers launched by the autoscaler", registry=CONTROLLER)
workers_retired = Counter("daas_workers_retired", "workers a steady load no longer needed, asked to retire "
                          "(daas.scaling.surplus)", registry=CONTROLLER)
launch_refusals = Counter("daas_launch_refusals", "launches the provider refused (no capacity, a quota, "
                          "throttling)", registry=CONTROLLER)
dead_letter_images = Counter("daas_dead_letter_images", "images given up on after DAAS_MAX_RECEIVES failed "
                             "deliveries (the reaper wrote their error results)", registry=CONTROLLER)
batch_objects_listed = Counter("daas_batch_objects_listed", "objects listed under batches' source prefixes",
                               registry=CONTROLLER)
batch_images_enqueued = Counter("daas_batch_images_enqueued", "batch images enqueued (matching the globs)",
                                registry=CONTROLLER)
batch_images_finished = Counter("daas_batch_images_finished", "images of finished or cancelled batches, by "
                                "outcome", ["outcome"], registry=CONTROLLER)
callbacks_sent = Counter("daas_callbacks", "completion callbacks, by outcome (delivered, failed)", ["outcome"],
                         registry=CONTROLLER)
CONTROLLER_NAMES = {family.name for family in CONTROLLER.collect()}  # its counters' names, read once


def serve_controller(settings: config.Settings) -> None:
    """The controller's /metrics on its own port (no key: bound to DAAS_HOST, loopback on the control
    host; scrape it there or through an SSM port forward). A port in use is a warning, not a stop."""
    if not settings.controller_metrics_port:
        return
    CONTROLLER.register(TickCollector(settings))
    try:
        start_http_server(settings.controller_metrics_port, addr=settings.host, registry=CONTROLLER)
    except OSError as exc:
        log.warning("the controller's metrics are not served: port %d: %s", settings.controller_metrics_port, exc)


def observe_results(results: list[dict], store_ms: float | None = None) -> None:
    """Count a chunk's results and their stage timings (timings_ms; `store_ms`, the chunk's PUT,
    shared among its labelled images)."""
    labelled = [result for result in results if result.get("timings_ms")]
    for result in results:
        images_classified.labels(outcome="done" if result.get("status") == "done" else "error").inc()
        for stage, ms in (result.get("timings_ms") or {}).items():
            image_stage_seconds.labels(stage=stage).observe(ms / 1000)
        if store_ms and result in labelled:
            image_stage_seconds.labels(stage="store").observe(store_ms / len(labelled) / 1000)


class TickCollector:
    """Gauges from the autoscaler's latest tick: queue depth, workers, a refused launch."""

    def __init__(self, settings: config.Settings):
        self.settings, self.read_at, self.tick = settings, 0.0, None

    def latest(self) -> dict | None:
        if time.monotonic() - self.read_at > config.METRICS_TICK_CACHE:
            self.tick, self.read_at = health.read(self.settings, health.TICK), time.monotonic()
        return self.tick

    def collect(self):
        tick = self.latest()
        if tick is None:  # no controller yet: no gauges rather than zeros that would look measured
            return
        queue = GaugeMetricFamily("daas_queue_messages", "classify queue messages (tasks), by state",
                                  labels=["state"])
        for state, value in tick["queue"].items():
            queue.add_metric([state], value)
        workers = GaugeMetricFamily("daas_workers", "workers, by state", labels=["state"])
        for state, value in tick["workers"].items():
            workers.add_metric([state], value)
        yield queue
        yield workers
        yield GaugeMetricFamily("daas_launch_refused", "1 when the latest launch was refused by the provider",
                                value=1 if tick.get("refused") else 0)
        yield GaugeMetricFamily("daas_autoscaler_tick_age_seconds", "seconds since the autoscaler's latest tick",
                                value=max(0.0, time.time() - tick["t"]))


class Without:
    """A collector's families but those named. In multiprocess mode every process that imports this
    module writes the controller's counters into the folder too, at 0: the web tier's /metrics had
    shown `daas_workers_launched_total 0` while the controller's counted launches."""

    def __init__(self, collector, names: set[str]):
        self.collector, self.names = collector, names

    def collect(self):
        return (family for family in self.collector.collect() if family.name not in self.names)


def exposition(collector: TickCollector) -> tuple[bytes, str]:
    """The text format of every process's metrics (multiprocess mode when set up) and the tick's."""
    registry = CollectorRegistry()
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        registry.register(Without(multiprocess.MultiProcessCollector(None), CONTROLLER_NAMES))
    else:  # one process (Flask's test client, a development server): this process's own metrics
        for metric in (requests_total, images_accepted, images_classified, image_stage_seconds):
            registry.register(metric)
    registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
