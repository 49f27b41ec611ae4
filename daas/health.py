"""The control plane's vital signs: the records of the latest autoscaler tick and beat tick.

The controller writes `tick.json` in the state folder at every scaling decision (with what it
measured: GET /api/status serves it), beat writes `beat.json` whenever it wakes up to send due
tasks (daas.state: replaced atomically). The web tier, the controller and beat share one
host and one state folder (`daas up` locally, the control host's systemd units on AWS). From their
ages `problem` tells whether the autoscaler is working and, if not, whose fault it is: `/healthz`
answers 503 with that sentence, and `daas up` restarts the process it names.
"""
from __future__ import annotations

import time
from pathlib import Path

from daas import state
from daas.config import TICKS_MISSED_UNHEALTHY, Settings

TICK, BEAT = "tick.json", "beat.json"


def record(state_dir: Path, name: str, document: dict) -> None:
    state.write_json(state_dir / name, document)


def read(state_dir: Path, name: str) -> dict | None:
    return state.read_json(state_dir / name)


def problem(settings: Settings, now: float | None = None) -> tuple[str, str] | None:
    """(the process at fault, a sentence for people) when the autoscaler has not ticked for
    TICKS_MISSED_UNHEALTHY intervals; None while it ticks."""
    now = time.time() if now is None else now
    limit = TICKS_MISSED_UNHEALTHY * settings.scale_interval
    tick, beat = read(settings.state_dir, TICK), read(settings.state_dir, BEAT)
    if tick and now - tick["t"] <= limit:
        return None
    since = f"for {now - tick['t']:.0f} s" if tick else "yet"
    if not beat or now - beat["t"] > limit:
        return "beat", (f"the autoscaler has not ticked {since} (limit {limit:.0f} s, {TICKS_MISSED_UNHEALTHY} "
                        f"intervals): beat has sent no tick {'for %.0f s' % (now - beat['t']) if beat else 'yet'}")
    return "controller", (f"the autoscaler has not ticked {since} (limit {limit:.0f} s, {TICKS_MISSED_UNHEALTHY} "
                          "intervals) although beat sends ticks: the controller is down or stalled")
