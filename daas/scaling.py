"""The scaling policy: how many workers to launch now, as pure functions of what the controller measured.

Two policies live here, tested in milliseconds with made-up clocks (tests/test_scaling.py) and
replayed over traces by the simulator (daas/bench/simulate.py), which prices them beside the peer
policies:

- `boot_aware` (the controller's): it knows how long a worker takes from launch to its first
  heartbeat and how many images a worker classifies a second, so it launches only workers that
  arrive before the backlog drains, and enough to drain it within DAAS_SCALE_DRAIN_TARGET seconds;
- `per_message` (before issue 19): one worker per DAAS_SCALE_TARGET messages, whatever a worker's
  boot time and speed (one 500-image upload asked for 50 workers).

Scale-in is never decided here: idle workers power themselves off (daas.lifecycle), so a busy
worker is never killed and a boundary never thrashes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# A worker launched for a backlog must expect at least this many times its own boot in work:
# with boots of minutes (EC2) the policy accepts a drain time of (1 + WORK_PER_BOOT) boots rather
# than launching workers that would boot for longer than they work. Chosen from the simulator's
# table (README, Scaling policy): 1 kept the new policy's p99 within the peers' on every trace at
# the lowest cost of the values tried (0.5, 1, 2).
WORK_PER_BOOT = 1.0


@dataclass(frozen=True)
class Fleet:
    """What the controller measured at one decision."""

    backlog: int                 # images waiting in the queue or in work
    ready: int                   # workers consuming (retiring ones excluded)
    starting: tuple[float, ...]  # seconds since each worker still booting was launched
    rate: float                  # images a second one worker classifies (recent, measured)
    boot: float                  # seconds from a launch to the worker's first heartbeat (observed)


@dataclass(frozen=True)
class Limits:
    drain_target: float  # seconds within which the backlog should be done
    minimum: int = 0
    maximum: int = 20


def drain_time(backlog: float, rate: float, arrivals: list[float]) -> float:
    """Seconds until `backlog` images are done by workers that start at `arrivals` (seconds from now;
    0 for a ready worker), each classifying `rate` images a second. Infinite with no worker."""
    done_per_s, t, left = 0.0, 0.0, float(backlog)
    for at in sorted(arrivals):
        if done_per_s and left <= done_per_s * (at - t):
            break
        left -= done_per_s * (at - t)
        t, done_per_s = at, done_per_s + rate
    return t + left / done_per_s if done_per_s else math.inf


def boot_aware(fleet: Fleet, limits: Limits) -> int:
    """Workers to launch now.

    The first image launches one worker at once (0 -> 1). Beyond that, a worker is added while the
    fleet (ready workers now, booting ones when their boot is over, new ones after `fleet.boot`)
    would take longer than the deadline to drain the backlog, and only while the backlog would
    still be there when the new worker arrives. The deadline is the drain target, stretched where
    boots are long so that each new worker works at least WORK_PER_BOOT boots."""
    current = fleet.ready + len(fleet.starting)
    floor = max(0, limits.minimum - current)
    room = limits.maximum - current
    if fleet.backlog <= 0 or room <= 0:
        return max(0, min(floor, room))
    arrivals = [0.0] * fleet.ready + [max(0.0, fleet.boot - age) for age in fleet.starting]
    launch = 0
    if not arrivals:
        arrivals, launch = [fleet.boot], 1
    deadline = max(limits.drain_target, fleet.boot * (1 + WORK_PER_BOOT))
    rate = max(fleet.rate, 1e-6)
    while launch < room:
        done_in = drain_time(fleet.backlog, rate, arrivals)
        if done_in <= deadline or done_in <= fleet.boot:
            break
        arrivals.append(fleet.boot)
        launch += 1
    return max(launch, floor)


def per_message(visible: int, in_flight: int, running: int, starting: int, *,
                target: int, minimum: int, maximum: int) -> int:
    """The policy before issue 19: desired = clamp(ceil((visible + in_flight) / target), minimum,
    maximum), booting workers counted as capacity. Kept for the simulator's comparison."""
    desired = min(max(math.ceil((visible + in_flight) / max(target, 1)), minimum), maximum)
    return max(0, desired - (running + starting))
