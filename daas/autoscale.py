"""The autoscaler: a beat-driven task on the control queue that launches workers for the backlog.

Scale-out only: workers scale themselves in by powering off when idle (daas.lifecycle), so the
scaler never stops a busy worker and cannot thrash around a boundary. Broken workers are ended by
the housekeeping task (daas.tasks.housekeeping), not here.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time

from celery.beat import PersistentScheduler

from daas import aws, config, health, timeline
from daas.celery_app import app
from daas.providers import Provider, make_provider
from daas.watchdog import notify

log = logging.getLogger(__name__)


def launches(visible: int, in_flight: int, running: int, starting: int, *,
             target: int, minimum: int, maximum: int) -> int:
    """Workers to launch now. Booting workers count as capacity, so a slow boot launches no second wave.

    desired = clamp(ceil((visible + in_flight) / target), minimum, maximum). Messages in flight
    count even with nothing visible: those of a killed worker are in flight until their visibility
    timeout (DAAS_VISIBILITY_TIMEOUT, 20 s) brings them back, and a worker launched for them now is
    ready by then. Messages held by live workers are their own backlog: with a prefetch of one,
    each busy worker holds one, and desired equals the busy workers.
    """
    desired = min(max(math.ceil((visible + in_flight) / max(target, 1)), minimum), maximum)
    return max(0, desired - (running + starting))


@functools.cache
def provider() -> Provider:
    return make_provider(config.load())


def measure(settings: config.Settings, workers: Provider) -> dict:
    """What the scaler decides on, and what GET /api/status serves (from the latest tick)."""
    depth = aws.queue_depth(settings)
    running, starting = workers.counts()
    return {"queue": depth, "workers": {"running": running, "starting": starting}, "provider": settings.provider}


# The controller runs its tasks on threads (see daas.cli): a beat tick and an upload's nudge may
# arrive together, and two decisions on the same counts would launch twice what is needed.
_deciding = threading.Lock()


@app.task(name="daas.scale", ignore_result=True)
def scale() -> int:
    with _deciding:
        return _scale()


def _scale() -> int:
    settings, workers = config.load(), provider()
    status = measure(settings, workers)
    depth, counts = status["queue"], status["workers"]
    count = launches(depth["visible"], depth["in_flight"], counts["running"], counts["starting"],
                     target=settings.scale_target, minimum=settings.scale_min, maximum=settings.scale_max)
    launched, refused = _launch(workers, count, settings.scale_interval)
    now = time.time()
    health.record(settings, health.TICK, {"t": now, "interval": settings.scale_interval, **status,
                                          "launched": launched, "refused": refused})
    timeline.append(settings.state_dir, {"t": now, **depth, **counts, "launched": launched})
    return launched


# After EC2 refuses a launch (no capacity, a vCPU quota, throttling) the next tries wait longer and
# longer, up to this many seconds, and the refusal is in every tick meanwhile: a tick is recorded
# whatever happens (issue 17: an unrecorded tick made /healthz take the only web host out).
MAX_LAUNCH_BACKOFF = 300.0
_refusals = {"count": 0, "retry_at": 0.0, "reason": ""}


def _launch(workers: Provider, count: int, interval: float) -> tuple[int, str]:
    """(workers launched, why EC2 refused: empty when it did not)."""
    from daas import metrics  # the controller's counters (workers import this module too, and need none)

    if not count:
        return 0, ""
    if time.time() < _refusals["retry_at"]:
        return 0, _refusals["reason"]
    try:
        workers.launch(count)
    except Exception as exc:  # a refused launch: recorded, retried later, never fatal to the tick
        _refusals["count"] += 1
        delay = min(MAX_LAUNCH_BACKOFF, interval * 2 ** _refusals["count"])
        _refusals.update(retry_at=time.time() + delay, reason=f"{type(exc).__name__}: {exc}"[:500])
        log.warning("could not launch %d workers (next try in %.0f s): %s", count, delay, _refusals["reason"])
        metrics.launch_refusals.inc()
        return 0, _refusals["reason"]
    _refusals.update(count=0, retry_at=0.0, reason="")
    metrics.workers_launched.inc(count)
    return count, ""


class BeatScheduler(PersistentScheduler):
    """Celery beat's own scheduler, recording each time it wakes up (daas.health) and pinging
    systemd's watchdog: a beat that stops sending ticks is noticed as such, not blamed on the
    controller."""

    settings = None

    def tick(self, *args, **kwargs):
        delay = super().tick(*args, **kwargs)
        self.settings = self.settings or config.load()
        health.record(self.settings, health.BEAT, {"t": time.time()})
        notify("WATCHDOG=1")
        return delay
