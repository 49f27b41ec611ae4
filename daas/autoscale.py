"""The autoscaler: a beat-driven task on the control queue that launches workers for the backlog.

Scale-out only: workers scale themselves in by powering off when idle (daas.worker), so the
scaler never stops a busy worker and cannot thrash around a boundary.
"""
from __future__ import annotations

import functools
import math
import time

from daas import aws, config, timeline
from daas.celery_app import app
from daas.providers import Provider, make_provider


def launches(visible: int, in_flight: int, running: int, starting: int, *,
             target: int, minimum: int, maximum: int) -> int:
    """Workers to launch now. Booting workers count as capacity, so a slow boot launches no second wave.

    desired = clamp(ceil((visible + in_flight) / target), minimum, maximum), but with nothing
    visible only the minimum: a new worker would find nothing to take. (Messages in flight with no
    live holder, e.g. after a crash, come back visible after the visibility timeout; launching for
    them earlier would start workers that idle out, again and again.)
    """
    backlog = visible + in_flight if visible else 0
    desired = min(max(math.ceil(backlog / max(target, 1)), minimum), maximum)
    return max(0, desired - (running + starting))


@functools.cache
def provider() -> Provider:
    return make_provider(config.load())


def measure(settings: config.Settings, workers: Provider) -> dict:
    """What the scaler and GET /api/status both report."""
    depth = aws.queue_depth(settings)
    running, starting = workers.counts()
    return {"queue": depth, "workers": {"running": running, "starting": starting}, "provider": settings.provider}


@app.task(name="daas.scale", ignore_result=True)
def scale() -> int:
    settings, workers = config.load(), provider()
    status = measure(settings, workers)
    depth, counts = status["queue"], status["workers"]
    count = launches(depth["visible"], depth["in_flight"], counts["running"], counts["starting"],
                     target=settings.scale_target, minimum=settings.scale_min, maximum=settings.scale_max)
    if count:
        workers.launch(count)
    timeline.append(settings.state_dir, {"t": time.time(), **depth, **counts, "launched": count})
    return count
