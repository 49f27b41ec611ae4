"""The control plane's vital signs: the records of the latest autoscaler tick and beat tick.

The controller records each scaling decision (`tick`, with what it measured: GET /api/status serves
it), beat records each time it wakes up to send due tasks (`beat`). Both live in the output bucket
under `control/`, so every web host reads the same records whatever host the controller runs on
(issue 17: with them on the controller's disk a second web host had none). From their ages
`problem` tells whether the autoscaler is working and, if not, whose fault it is: GET /api/status
says so, and `daas up` restarts the process it names. The load balancer's check, /healthz, judges
only what a web host itself serves: a stalled controller never takes the web tier down.
"""
from __future__ import annotations

import logging
import time

from botocore.exceptions import BotoCoreError, ClientError

from daas import storage
from daas.config import TICKS_MISSED_UNHEALTHY, Settings

log = logging.getLogger(__name__)
TICK, BEAT = "tick", "beat"
PREFIX = "control/"


def record(settings: Settings, name: str, document: dict) -> None:
    """Replace a record (one PUT). One that cannot be written is logged and reads as a late tick."""
    try:
        storage.put_json(settings, f"{PREFIX}{name}.json", document)
    except (BotoCoreError, ClientError) as exc:
        log.warning("could not record the %s: %r", name, exc)


def read(settings: Settings, name: str) -> dict | None:
    return storage.get_json(settings, f"{PREFIX}{name}.json")


def problem(settings: Settings, now: float | None = None) -> tuple[str, str] | None:
    """(the process at fault, a sentence for people) when the autoscaler has not ticked for
    TICKS_MISSED_UNHEALTHY intervals; None while it ticks."""
    return diagnose(read(settings, TICK), read(settings, BEAT), settings.scale_interval,
                    time.time() if now is None else now)


def diagnose(tick: dict | None, beat: dict | None, interval: float, now: float) -> tuple[str, str] | None:
    """`problem`'s rule on the two records (a pure function)."""
    limit = TICKS_MISSED_UNHEALTHY * interval
    if tick and now - tick["t"] <= limit:
        return None
    since = f"for {now - tick['t']:.0f} s" if tick else "yet"
    if not beat or now - beat["t"] > limit:
        return "beat", (f"the autoscaler has not ticked {since} (limit {limit:.0f} s, {TICKS_MISSED_UNHEALTHY} "
                        f"intervals): beat has sent no tick {'for %.0f s' % (now - beat['t']) if beat else 'yet'}")
    return "controller", (f"the autoscaler has not ticked {since} (limit {limit:.0f} s, {TICKS_MISSED_UNHEALTHY} "
                          "intervals) although beat sends ticks: the controller is down or stalled")
