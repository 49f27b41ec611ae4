"""The scaling policy: how many workers to launch now, as pure functions of what the controller measured.

Two policies live here, tested in milliseconds with made-up clocks (tests/test_scaling.py) and
replayed over traces by the simulator (daas/bench/simulate.py), which prices them beside the peer
policies:

- `boot_aware` (the controller's): it knows how long a worker takes from launch to its first
  heartbeat, how many tasks a worker finishes a second and how many arrive, so it launches only
  workers that arrive before the backlog drains, and enough to drain it within
  DAAS_SCALE_DRAIN_TARGET seconds while keeping up with what arrives;
- `per_message` (before issue 19): one worker per DAAS_SCALE_TARGET messages, whatever a worker's
  boot time and speed (one 500-image upload asked for 50 workers).

Work is counted in tasks (queue messages, up to DAAS_IMAGES_PER_TASK images each), as the
controller sees it: SQS counts messages, and a worker's rate is measured in tasks too (its
heartbeat record counts them), so uploads of one image and batches of ten need no conversion.

Scale-in has two paths, and neither kills a busy worker: an idle worker powers itself off
(daas.lifecycle), and `surplus` names the ready workers a steady load no longer needs, which the
controller asks to retire (each finishes the task in hand first). Idling out alone is not enough:
SQS hands each message to any waiting long poll, so a load that one worker could carry, spread
over the twenty a burst launched, keeps all twenty busy now and then and none of them ever idles
out (the simulator, dispatching at random as SQS does: the policy before this one kept 20 workers
for an hour of 10 images a second, 13.7 instance-hours where one does it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# A worker launched for a backlog must expect at least this many times its own boot in work:
# with boots of minutes (EC2) the policy accepts a drain time of (1 + WORK_PER_BOOT) boots rather
# than launching workers that would boot for longer than they work. Chosen with
# DAAS_SCALE_DRAIN_TARGET's default (30 s) from the simulator's table (`python -m daas bench
# simulate`, docs/simulate.json, README: Scaling policy): of 1, 2 and 3 with targets of 15, 30 and
# 60 s, the pair that lost fewest comparisons with the peer policies over every trace and boot
# time; of those, costs within 1% count as equal, and the lowest sum of p99s won. The table is flat
# (36 or 37 of 96 lost by every pair, $4.39 to $4.43 in all): these constants matter far less than
# knowing the boot, the inflow and a worker's rate in full tasks.
WORK_PER_BOOT = 1.0

# The busy share a fleet keeps at most after `surplus` retires workers: some capacity spare for the
# load's bursts, so that a retirement is not followed by a launch (a boot of minutes on EC2). From
# the simulator (`python -m daas bench simulate`): at 100 images/s against 60 a worker, 0.75 keeps
# three workers (1.7 workers' worth of load needs three at 75%), 0.85 and 0.9 keep two (2.06-2.16
# instance-hours for the hour instead of 3.04, p99 unchanged within 0.6 s, no launch after a
# retirement); 0.85, the lower of the two.
SURPLUS_BUSY = 0.85


@dataclass(frozen=True)
class Fleet:
    """What the controller measured at one decision."""

    backlog: int                 # tasks waiting in the queue or in work
    ready: int                   # workers consuming (retiring ones excluded)
    starting: tuple[float, ...]  # seconds since each worker still booting was launched
    rate: float                  # tasks a second one worker finishes (measured)
    boot: float                  # seconds from a launch to the worker's first heartbeat (observed)
    inflow: float = 0.0          # tasks a second arriving (measured, see Inflow)


@dataclass(frozen=True)
class Limits:
    drain_target: float  # seconds within which the backlog should be done
    minimum: int = 0
    maximum: int = 20


def drain_time(backlog: float, rate: float, arrivals: list[float], inflow: float = 0.0) -> float:
    """Seconds until the backlog is gone, with workers that start at `arrivals` (seconds from now;
    0 for a ready worker) each finishing `rate` tasks a second while `inflow` tasks a second
    arrive. Infinite where the workers never catch up."""
    capacity, t, left = 0.0, 0.0, float(backlog)
    for at in sorted(arrivals) + [math.inf]:
        net = capacity - inflow  # how fast the backlog shrinks (grows, when negative)
        if left <= 0 and net >= 0:
            return t
        if net > 0 and left <= net * (at - t):
            return t + left / net
        if at == math.inf:
            return math.inf
        left -= net * (at - t)
        t, capacity = at, capacity + rate
    return math.inf


class Inflow:
    """Tasks a second arriving beyond what the ready workers keep up with, from successive
    measurements of the backlog.

    Over each window of at least WINDOW seconds the backlog's growth is measured. Where it grows in
    two windows in a row, the ready workers were all busy and fell behind: what arrived is that
    growth plus what they finished (their capacity when the window began; workers that arrived
    within it are not credited, so the figure errs low), the smaller of the two windows' figures.
    One window is not enough: a burst (one upload of many images) grows the backlog once, and must
    not read as a stream (measured in the scaling bench: one 10-image upload taken as a stream
    launched a second worker for one task). Where the backlog does not grow, the workers keep up
    and the backlog is a burst to drain: the inflow is 0 (how far below their capacity it is cannot
    be told from the queue, and does not matter to a launch). A growth under a quarter of one
    worker's rate is noise (Poisson arrivals; in the simulator, growths of 0.2 tasks a second read
    as "not keeping up" added a worker every few minutes to a fleet that kept up). Fed by the
    controller's ticks and by the simulator alike."""

    WINDOW = 5.0
    NOISE = 0.25  # of one worker's tasks a second

    def __init__(self) -> None:
        self.start: tuple[float, int, float] | None = None  # (time, backlog, capacity) of the window
        self.windows: list[tuple[float, float]] = []         # (growth, arrivals) of the last two

    def update(self, now: float, backlog: int, capacity: float, rate: float) -> float:
        """The inflow in tasks a second; `capacity`: what the ready workers finish a second,
        `rate`: what one worker does."""
        if self.start is None:
            self.start = (now, backlog, capacity)
        elif now - self.start[0] >= self.WINDOW:
            began, before, serving = self.start
            growth = (backlog - before) / (now - began)
            self.windows = (self.windows + [(growth, growth + serving)])[-2:]
            self.start = (now, backlog, capacity)
        if len(self.windows) == 2 and all(growth > self.NOISE * rate for growth, _ in self.windows):
            return min(arrivals for _, arrivals in self.windows)
        return 0.0


def boot_aware(fleet: Fleet, limits: Limits, work_per_boot: float = WORK_PER_BOOT) -> int:
    """Workers to launch now.

    The first task launches one worker at once (0 -> 1). Beyond that, a worker is added while the
    fleet (ready workers now, booting ones when their boot is over, new ones after `fleet.boot`)
    would take longer than the deadline to drain the backlog (or never catch up with the inflow),
    and only while the backlog would still be there when the new worker arrives. The deadline is the drain target, stretched where
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
    deadline = max(limits.drain_target, fleet.boot * (1 + work_per_boot))
    rate = max(fleet.rate, 1e-6)
    while launch < room:
        done_in = drain_time(fleet.backlog, rate, arrivals, fleet.inflow)
        if done_in <= deadline or done_in <= fleet.boot:
            break
        arrivals.append(fleet.boot)
        launch += 1
    return max(launch, floor)


def surplus(busy: dict[str, float | None], backlog: int, starting: int, *, minimum: int = 0,
            target: float = SURPLUS_BUSY) -> list[str]:
    """The ready workers to ask to retire, least busy first: those beyond what the measured load
    needs to keep the rest at most `target` busy.

    `busy`: each ready worker's busy share (0 to 1) over the last window, None where a worker was not
    measured over a whole one (it just arrived). Nothing is retired while the fleet changes or
    works off a backlog: a worker not measured yet, a worker still booting, or more tasks waiting
    than ready workers (a burst being drained needs them all). At least one worker stays (the 0 -> 1
    launch pays a boot), and DAAS_SCALE_MIN."""
    if not busy or starting or backlog > len(busy) or any(share is None for share in busy.values()):
        return []
    load = sum(busy.values())  # workers' worth of busy time
    needed = max(1, minimum, math.ceil(load / target - 1e-9))
    return sorted(busy, key=lambda worker: (busy[worker], worker))[:max(0, len(busy) - needed)]


def per_message(visible: int, in_flight: int, running: int, starting: int, *,
                target: int, minimum: int, maximum: int) -> int:
    """The policy before issue 19: desired = clamp(ceil((visible + in_flight) / target), minimum,
    maximum), booting workers counted as capacity. Kept for the simulator's comparison."""
    desired = min(max(math.ceil((visible + in_flight) / max(target, 1)), minimum), maximum)
    return max(0, desired - (running + starting))
