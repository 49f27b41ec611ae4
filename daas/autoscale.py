"""The autoscaler: a beat-driven task on the control queue that launches workers for the backlog,
as the boot-aware policy (daas.scaling) says from what the controller measured (daas.observed).

Scale-in never stops a busy worker: workers power themselves off when idle (daas.lifecycle), and
at each housekeeping run `retire_surplus` asks the workers that a steady load no longer needs to
retire (daas.scaling.surplus: they finish the task in hand, then power off). Broken workers are
ended by the housekeeping task (daas.control.housekeeping), not here.
"""
from __future__ import annotations

import functools
import logging
import threading
import time

from celery.beat import PersistentScheduler

from daas import aws, config, fleet, health, scaling, timeline
from daas.celery_app import app
from daas.observed import Observed
from daas.providers import Provider, make_provider
from daas.watchdog import notify

log = logging.getLogger(__name__)


@functools.cache
def provider() -> Provider:
    return make_provider(config.load())


@functools.cache
def observed() -> Observed:
    return Observed(config.load())


def measure(settings: config.Settings, workers: Provider, seen: Observed | None = None) -> dict:
    """What the scaler decides on, and what GET /api/status serves (from the latest tick): the
    queue's depth, and the workers by their heartbeats (one LIST): running (consuming), starting
    (booting since `starting` seconds ago), retiring (stopped consuming; not capacity)."""
    seen = seen or Observed(settings)
    depth, now = aws.queue_depth(settings), time.time()
    beats = fleet.heartbeats(settings)
    latest = fleet.latest_by_worker(beats, fleet.owners(beats, workers.worker_id))
    view = seen.view(workers.workers(), latest, now, settings.stale_after)
    inflow = seen.inflow.update(now, depth["visible"] + depth["in_flight"], view.ready * seen.rate, seen.rate)
    return {"queue": depth, "provider": settings.provider,
            "workers": {"running": view.ready, "starting": len(view.starting), "retiring": view.retiring},
            "starting_s": [round(age, 1) for age in view.starting],
            "estimates": {"boot_s": round(seen.boot, 1), "tasks_per_s": round(seen.rate, 3),
                          "inflow_tasks_per_s": round(inflow, 3)}}


# The controller runs its tasks on threads (see daas.cli): a beat tick and an upload's nudge may
# arrive together, and two decisions on the same counts would launch twice what is needed. A
# nudge that finds a decision running never waits for it (under EC2 throttling one decision can
# take many seconds): it asks the running one to decide once more when it is done.
_deciding = threading.Lock()
_again = threading.Event()


@app.task(name="daas.scale", ignore_result=True)
def scale() -> int:
    _again.set()
    launched = 0
    while _again.is_set() and _deciding.acquire(blocking=False):
        try:
            _again.clear()
            launched += _scale()
        finally:
            _deciding.release()
    return launched


def _scale() -> int:
    settings, workers, seen = config.load(), provider(), observed()
    status = measure(settings, workers, seen)
    depth, counts = status["queue"], status["workers"]
    count = scaling.boot_aware(
        scaling.Fleet(backlog=depth["visible"] + depth["in_flight"], ready=counts["running"],
                      starting=tuple(status["starting_s"]), rate=seen.rate, boot=seen.boot,
                      inflow=status["estimates"]["inflow_tasks_per_s"]),
        scaling.Limits(settings.scale_drain_target, settings.scale_min, settings.scale_max))
    launched, refused = _launch(workers, count, settings.scale_interval)
    now = time.time()
    health.record(settings, health.TICK, {"t": now, "interval": settings.scale_interval, **status,
                                          "launched": launched, "refused": refused})
    timeline.append(settings.state_dir, {"t": now, **depth, "running": counts["running"],
                                         "starting": counts["starting"], "launched": launched})
    return launched


def retire_surplus(settings: config.Settings, records: dict[str, dict[str, dict]], workers: Provider,
                   seen: Observed) -> list[str]:
    """Ask the workers a steady load no longer needs to retire (`records`: the live workers'
    heartbeat records, {worker id: {record name: record}}, read by housekeeping), once those asked
    before are gone, whose requests are then forgotten. Returns the ids of the workers asked."""
    from daas import metrics  # the controller's counters (workers import this module too, and need none)

    busy = seen.busy_shares(records)  # every run, so that each share covers one interval
    live = {name for named in records.values() for name in named}
    standing = fleet.retire_requests(settings)
    for name in standing - live:
        fleet.forget_retire_request(settings, name)
    if standing & live:  # a worker asked before has not left yet: the fleet is changing
        return []
    starting = sum(1 for worker in workers.workers() if worker.id not in records)
    depth = aws.queue_depth(settings)
    retire = scaling.surplus(busy, depth["visible"] + depth["in_flight"], starting, minimum=settings.scale_min)
    load = sum(share or 0.0 for share in busy.values())
    for worker_id in retire:
        reason = (f"asked to retire by the controller: {len(busy) - len(retire)} of {len(busy)} workers "
                  f"carry the load ({load:.2f} workers' worth busy)")
        log.info("worker %s %s", worker_id, reason)
        for name in records[worker_id]:
            fleet.ask_to_retire(settings, name, reason)
    metrics.workers_retired.inc(len(retire))
    return retire


# After EC2 refuses a launch (no capacity, a vCPU quota, throttling) the next tries wait longer and
# longer, up to MAX_LAUNCH_BACKOFF seconds, and the refusal is in every tick meanwhile: a tick is recorded
# whatever happens (issue 17: an unrecorded tick made /healthz take the only web host out).
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
        delay = min(config.MAX_LAUNCH_BACKOFF, interval * 2 ** _refusals["count"])
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
