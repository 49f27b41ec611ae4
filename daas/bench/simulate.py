"""`python -m daas bench simulate`: replay upload traces through scaling policies and price them.

A discrete-event model of the service at the grain of the queue's messages: uploads become
messages of up to DAAS_IMAGES_PER_TASK images (as daas.jobs chunks them); a worker takes one
message at a time once its boot is over, and classifies `rate` images a second; a message goes to
any idle worker, chosen at random (SQS hands a message to any waiting long poll: no worker is
preferred); an idle worker powers off after the idle timeout (daas.lifecycle), or the policy
removes it (daas's surplus retirement, and the peers that scale in themselves). Each policy decides on what it could measure at its own interval. An image's
latency is from its upload to its message's last label; a worker is billed from its launch to its
end, 60 s at least (EC2's per-second billing).

Policies: daas's boot-aware one (daas.scaling.boot_aware), the one before it (per_message), a
KEDA-like one (messages / queueLength, 30 s polling, 300 s cooldown to zero, the HPA's 300 s
scale-down stabilisation), a SageMaker-async-like one (target tracking on backlog per instance
over one-minute datapoints, 3 to scale out and 15 to scale in, a 300 s scale-in cooldown, and a
step policy to leave zero), and a fixed fleet sized for the trace's peak minute.

Each comparison the new policy loses is said to be one of three kinds (Verdict): a p99 that no
policy starting from zero workers could reach (the fixed fleet's, booted before the trace: the
first images of every other policy wait for a boot, and from_zero_floor computes the p99 that wait
alone makes), a trade of cost against p99, or a plain loss.

The model of one worker is checked against a measured local run: `check_against` replays the
scaling bench's elastic 100-image run (docs/scaling.json) with its measured boot and rate.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daas import config, scaling

IMAGES_PER_MESSAGE = config.Settings.images_per_task  # DAAS_IMAGES_PER_TASK
MAXIMUM = 20           # workers at most, every policy (DAAS_SCALE_MAX on EC2)
IDLE_TIMEOUT = config.Settings.idle_timeout  # DAAS_IDLE_TIMEOUT
BOOTS = (5.0, 60.0, 120.0, 180.0)
DRAIN_TARGET = config.Settings.scale_drain_target  # DAAS_SCALE_DRAIN_TARGET's default
BILLING_MINIMUM_S = 60.0
# Prices of the default worker type. The on-demand price is AWS's public price list for Linux in
# us-east-1; spot prices move every few minutes by zone: the figure is a typical one, not a quote.
# Neither could be checked from this machine (no internet): pass --on-demand / --spot to reprice.
PRICES = {"instance_type": "c7i.large", "region": "us-east-1", "on_demand_per_h": 0.08925,
          "spot_per_h": 0.0357, "dated": "2025 (AWS EC2 on-demand price list; spot: typical of the spot price "
          "history, about 60% off)", "checked_here": False}


# -- traces ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    name: str
    uploads: list[tuple[float, int]]  # (seconds from the start, images), sorted
    duration: float                   # the period the trace stands for (a fixed fleet is billed for it)

    @property
    def images(self) -> int:
        return sum(n for _, n in self.uploads)

    def peak_per_s(self, window: float = 60.0) -> float:
        """Images a second in the trace's busiest `window` seconds."""
        times = np.array([t for t, _ in self.uploads])
        counts = np.cumsum([0] + [n for _, n in self.uploads])
        ends = np.searchsorted(times, times + window, side="left")
        return float(max(counts[ends] - counts[np.arange(len(times))]) / window)


def poisson(name: str, per_s, duration: float, seed: int) -> Trace:
    """Arrivals at `per_s(t)` images a second; each second's arrivals are one upload (the web tier
    chunks them; single POST /classify requests are coalesced, daas.coalesce)."""
    rng = np.random.default_rng(seed)
    uploads = [(t + float(rng.random()), int(n)) for t in range(int(duration))
               if (n := rng.poisson(per_s(t))) > 0]
    return Trace(name, sorted(uploads), duration)


def working_day(seed: int = 7) -> Trace:
    """Eight hours: a trickle that swells to 2 images a second at midday, and ten batch uploads of
    200 to 3,000 images at random times."""
    day = 8 * 3600.0
    trickle = poisson("day", lambda t: 0.2 + 1.8 * math.sin(math.pi * t / day) ** 2, day, seed)
    rng = random.Random(seed)
    batches = [(rng.uniform(0, day - 600), rng.randint(200, 3000)) for _ in range(10)]
    return Trace("bursty working day (8 h)", sorted(trickle.uploads + batches), day)


def traces() -> list[Trace]:
    return [
        Trace("seed: batches of 10 and 30 images", [(0.0, 10), (600.0, 30)], 1200.0),
        Trace("original client: bursts of 100 one-image requests",
              [(start + i * 0.01, 1) for start in (0.0, 900.0, 1800.0) for i in range(100)], 2700.0),
        working_day(),
        *(poisson(f"Poisson {rate} images/s (1 h)", lambda t, r=rate: r, 3600.0, seed=rate) for rate in (1, 10, 100)),
    ]


# -- the model -------------------------------------------------------------------------------------
@dataclass
class Worker:
    launched: float
    ready_at: float
    ended: float | None = None
    busy: bool = False
    idle_since: float = 0.0
    draining: bool = False  # removed by the policy: ends after its message
    busy_s: float = 0.0     # seconds spent on messages so far

    def alive(self) -> bool:
        return self.ended is None


@dataclass
class Sim:
    trace: Trace
    policy: "Policy"
    boot: float
    rate: float
    workers: list[Worker] = field(default_factory=list)        # alive
    ended: list[Worker] = field(default_factory=list)
    queue: list[tuple[float, int]] = field(default_factory=list)  # FIFO of (upload time, images)
    head: int = 0
    done: list[tuple[float, int, float]] = field(default_factory=list)  # (upload time, images, done time)
    events: list = field(default_factory=list)
    seq: int = 0
    now: float = 0.0
    images_done: int = 0
    busy_s: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def tasks_per_s(self) -> float:
        """One worker's full tasks a second as the controller measures it: its heartbeat records
        count images and busy seconds (daas.observed). Not tasks: a trickle's one-image tasks
        would make a worker look ten times faster at the full tasks of the next batch (measured
        here: the working day's batches of 2,000 images waited 40 s for one worker whose rate read
        33 tasks a second)."""
        return self.images_done / self.busy_s / IMAGES_PER_MESSAGE if self.busy_s else self.rate / IMAGES_PER_MESSAGE

    def at(self, t: float, kind: str, data=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, data))

    # what a policy may measure
    @property
    def visible(self) -> int:
        return len(self.queue) - self.head

    def serving(self) -> list[Worker]:
        return [w for w in self.workers if not w.draining]

    def in_flight(self) -> int:
        return sum(w.busy for w in self.workers)

    def ready(self) -> list[Worker]:
        return [w for w in self.serving() if w.ready_at <= self.now]

    def starting_ages(self) -> tuple[float, ...]:
        return tuple(self.now - w.launched for w in self.serving() if w.ready_at > self.now)

    # what a policy may do
    def launch(self, count: int) -> None:
        for _ in range(count):
            worker = Worker(self.now, self.now + self.boot)
            self.workers.append(worker)
            self.at(worker.ready_at, "ready", worker)

    def remove(self, count: int) -> None:
        """End `count` workers, idle ones first."""
        self.retire(sorted(self.serving(), key=lambda w: (w.busy, w.ready_at <= self.now))[:count])

    def retire(self, workers: list[Worker]) -> None:
        """End these workers; a busy one ends after its message (a graceful stop)."""
        for worker in workers:
            worker.draining = True
            if not worker.busy:
                self.end(worker)

    def end(self, worker: Worker) -> None:
        worker.ended = self.now
        self.workers.remove(worker)
        self.ended.append(worker)

    # the run
    def dispatch(self) -> None:
        if self.head >= len(self.queue):
            return
        idle = [worker for worker in self.ready() if not worker.busy]
        self.rng.shuffle(idle)
        for worker in idle[:len(self.queue) - self.head]:
            uploaded, images = self.queue[self.head]
            self.head += 1
            worker.busy = True
            self.at(self.now + images / self.rate, "done", (worker, uploaded, images))

    def run(self) -> dict:
        for t, images in self.trace.uploads:
            self.at(t, "upload", images)
        self.policy.start(self)
        last_upload = self.trace.uploads[-1][0]
        while self.events:
            self.now, _, kind, data = heapq.heappop(self.events)
            if self.now > self.trace.duration + 86400:
                raise RuntimeError(f"{self.policy.name} on {self.trace.name}: still running a day after the trace")
            if kind == "upload":
                for start in range(0, data, IMAGES_PER_MESSAGE):
                    self.queue.append((self.now, min(IMAGES_PER_MESSAGE, data - start)))
            elif kind == "done":
                worker, uploaded, images = data
                self.done.append((uploaded, images, self.now))
                self.images_done, self.busy_s = self.images_done + images, self.busy_s + images / self.rate
                worker.busy_s += images / self.rate
                worker.busy, worker.idle_since = False, self.now
                if worker.draining:
                    self.end(worker)
                elif self.policy.retire_idle:
                    self.at(self.now + IDLE_TIMEOUT, "idle", worker)
            elif kind == "idle":
                if data.alive() and not data.busy and self.now - data.idle_since >= IDLE_TIMEOUT - 1e-6:
                    self.end(data)
            elif kind == "ready" and data.alive() and self.policy.retire_idle:
                data.idle_since = self.now
                self.at(self.now + IDLE_TIMEOUT, "idle", data)
            elif kind == "tick":
                finished = self.now > last_upload and self.head == len(self.queue) and not self.in_flight()
                if finished and not self.workers:
                    continue
                self.policy.decide(self)
                if not (finished and self.policy.fixed):
                    self.at(self.now + self.policy.interval, "tick")
            self.dispatch()
        return self.report()

    def report(self) -> dict:
        uploaded, images, done = (np.array(column, dtype=float) for column in zip(*self.done))
        latencies = np.repeat(done - uploaded, images.astype(int))
        end = max(self.trace.duration, float(done.max()))
        billed = sum(max(BILLING_MINIMUM_S, (w.ended if w.ended is not None else end) - w.launched)
                     for w in self.workers + self.ended)
        assert int(images.sum()) == self.trace.images, "images lost in the simulation"
        return {"instance_hours": billed / 3600, "p50_s": float(np.percentile(latencies, 50)),
                "p99_s": float(np.percentile(latencies, 99)), "last_label_s": float(done.max()),
                "launches": len(self.workers) + len(self.ended), "images": int(images.sum())}


# -- the policies ----------------------------------------------------------------------------------
class Policy:
    name = ""
    interval = 5.0        # DAAS_SCALE_INTERVAL
    retire_idle = True    # workers power themselves off when idle (daas's own scale-in)
    fixed = False
    maximum = MAXIMUM

    def start(self, sim: Sim) -> None:
        sim.at(0.0, "tick")

    def decide(self, sim: Sim) -> None:
        raise NotImplementedError


class BootAware(Policy):
    """daas's controller: the boot-aware launches every tick, and at every housekeeping run the
    surplus of a steady load asked to retire (each worker's busy share measured between two runs,
    as the controller reads it from the heartbeat records)."""

    name = "daas (boot-aware)"
    HOUSEKEEPING = config.Settings.sweep_interval  # DAAS_SWEEP_INTERVAL

    def __init__(self, drain_target: float = DRAIN_TARGET, work_per_boot: float = scaling.WORK_PER_BOOT,
                 surplus_busy: float | None = scaling.SURPLUS_BUSY):
        self.drain_target, self.work_per_boot, self.surplus_busy = drain_target, work_per_boot, surplus_busy
        self.inflow = scaling.Inflow()
        self.counted: dict[int, tuple[float, float]] = {}  # id(worker): (time, its busy seconds) at the last run
        self.next_housekeeping = self.HOUSEKEEPING

    def decide(self, sim: Sim) -> None:
        backlog, ready, rate = sim.visible + sim.in_flight(), len(sim.ready()), sim.tasks_per_s()
        inflow = self.inflow.update(sim.now, backlog, ready * rate, rate)
        fleet = scaling.Fleet(backlog=backlog, ready=ready, starting=sim.starting_ages(), rate=rate, boot=sim.boot,
                              inflow=inflow)
        sim.launch(scaling.boot_aware(fleet, scaling.Limits(self.drain_target, 0, self.maximum), self.work_per_boot))
        if self.surplus_busy is not None and sim.now >= self.next_housekeeping:
            self.next_housekeeping = sim.now + self.HOUSEKEEPING
            self.retire_surplus(sim)

    def retire_surplus(self, sim: Sim) -> None:
        workers = {id(worker): worker for worker in sim.ready()}
        busy = {key: (worker.busy_s - self.counted[key][1]) / (sim.now - self.counted[key][0])
                if key in self.counted and sim.now > self.counted[key][0] else None
                for key, worker in workers.items()}
        self.counted = {key: (sim.now, worker.busy_s) for key, worker in workers.items()}
        retire = scaling.surplus(busy, sim.visible + sim.in_flight(), len(sim.starting_ages()),
                                 target=self.surplus_busy)
        sim.retire([workers[key] for key in retire])


class PerMessage(Policy):
    name = "daas before (1 worker a message)"

    def decide(self, sim: Sim) -> None:
        sim.launch(scaling.per_message(sim.visible, sim.in_flight(), len(sim.ready()), len(sim.starting_ages()),
                                       target=1, minimum=0, maximum=self.maximum))


class KedaLike(Policy):
    """KEDA's aws-sqs-queue scaler: desired = ceil(messages / queueLength) (visible and in flight,
    queueLength 5), polled every 30 s; the HPA scales down only to the highest desired count of
    the last 300 s; to zero after 300 s without messages (cooldownPeriod). Removed pods finish
    their message."""

    name, interval, retire_idle = "KEDA-like", 30.0, False
    QUEUE_LENGTH, STABILISATION, COOLDOWN = 5, 300.0, 300.0

    def __init__(self):
        self.history: list[tuple[float, int]] = []
        self.last_active = -math.inf

    def decide(self, sim: Sim) -> None:
        messages = sim.visible + sim.in_flight()
        if messages:
            self.last_active = sim.now
        desired = min(self.maximum, math.ceil(messages / self.QUEUE_LENGTH))
        self.history = [(t, d) for t, d in self.history if sim.now - t < self.STABILISATION] + [(sim.now, desired)]
        if sim.now - self.last_active < self.COOLDOWN:
            desired = max(1, max(d for _, d in self.history))
        current = len(sim.serving())
        sim.launch(max(0, desired - current))
        sim.remove(max(0, current - desired))


class SageMakerLike(Policy):
    """SageMaker asynchronous inference's documented setup: target tracking on
    ApproximateBacklogSizePerInstance (target 5) over one-minute datapoints (3 above to scale
    out, 15 below to scale in), a 300 s scale-in cooldown, MinCapacity 0, and a step policy on
    HasBacklogWithoutCapacity that adds one instance to leave zero."""

    name, interval, retire_idle = "SageMaker-async-like", 60.0, False
    TARGET, OUT_POINTS, IN_POINTS, IN_COOLDOWN = 5.0, 3, 15, 300.0

    def __init__(self):
        self.above = self.below = 0
        self.last_in = -math.inf

    def decide(self, sim: Sim) -> None:
        backlog, current = sim.visible + sim.in_flight(), len(sim.serving())
        if current == 0:
            sim.launch(1 if backlog else 0)
            return
        per_instance = backlog / current
        self.above = self.above + 1 if per_instance > self.TARGET else 0
        self.below = self.below + 1 if per_instance < 0.9 * self.TARGET else 0
        desired = min(self.maximum, math.ceil(backlog / self.TARGET))
        if self.above >= self.OUT_POINTS and desired > current:
            sim.launch(desired - current)
            self.above = 0
        elif self.below >= self.IN_POINTS and desired < current and sim.now - self.last_in >= self.IN_COOLDOWN:
            sim.remove(current - desired)
            self.below, self.last_in = 0, sim.now


class FixedFleet(Policy):
    """Workers for the trace's busiest minute, launched a boot before it starts (and billed from
    then, as EC2 bills from the launch), ended when it ends."""

    name, retire_idle, fixed = "fixed fleet (peak)", False, True

    def start(self, sim: Sim) -> None:
        count = max(1, min(self.maximum, math.ceil(sim.trace.peak_per_s() / sim.rate)))
        sim.workers = [Worker(-sim.boot, 0.0) for _ in range(count)]


def policies() -> list[Policy]:
    return [BootAware(), PerMessage(), KedaLike(), SageMakerLike(), FixedFleet()]


def simulate(trace: Trace, policy: Policy, boot: float, rate: float) -> dict:
    return Sim(trace, policy, boot, rate).run()


# -- the table -------------------------------------------------------------------------------------
def priced(result: dict, trace: Trace, prices: dict) -> dict:
    on_demand = result["instance_hours"] * prices["on_demand_per_h"]
    return {**result, "usd_on_demand": on_demand, "usd_spot": result["instance_hours"] * prices["spot_per_h"],
            "images_per_usd": trace.images / on_demand if on_demand else math.inf}


def from_zero_floor(trace: Trace, boot: float, rate: float) -> float:
    """The shortest p99 that any policy starting with no worker could reach on `trace`: with as many
    workers as it likes launched at the first upload, each message waits for their boot (or for
    its own upload, if later), then for its own images' work. Every policy here but the fixed fleet
    starts from zero, so no image of theirs is labelled sooner, and none of their p99s is below this."""
    ready = trace.uploads[0][0] + boot
    latencies, images = [], []
    for uploaded, count in trace.uploads:
        for start in range(0, count, IMAGES_PER_MESSAGE):
            size = min(IMAGES_PER_MESSAGE, count - start)
            latencies.append(max(uploaded, ready) - uploaded + size / rate)
            images.append(size)
    return float(np.percentile(np.repeat(latencies, images), 99))


def slower(p99: float, than: float) -> bool:
    """Within half a second or 2% counts as the same p99 (event timing, not policy)."""
    return p99 > max(than * 1.02, than + 0.5)


def dearer(usd: float, than: float) -> bool:
    """Within 1% counts as the same cost."""
    return usd > than * 1.01 + 1e-9


@dataclass(frozen=True)
class Verdict:
    """How ours compares with one peer. kind: "" where ours is at least as good on p99 at no more
    cost; "from zero" where it is slower at no more cost and no policy that starts from zero
    workers could be as fast (the peer's workers were booted before the trace: see
    from_zero_floor); "trade" where it is slower but cheaper, or dearer but faster; "dominated"
    where it is worse on one and no better on the other (dearer and slower included, even where
    the p99 is out of reach from zero: the cost is not)."""

    kind: str
    words: str


def verdict(mine: dict, theirs: dict, floor: float | None = None) -> Verdict:
    """Ours (`mine`) against one peer's row; `floor`: the trace's from_zero_floor."""
    is_slower = slower(mine["p99_s"], theirs["p99_s"])
    is_dearer = dearer(mine["usd_on_demand"], theirs["usd_on_demand"])
    worse = " and ".join(why for why, bad in (("slower p99", is_slower), ("dearer", is_dearer)) if bad)
    if not worse:
        return Verdict("", "")
    if is_slower and not is_dearer and floor is not None and slower(floor, theirs["p99_s"]):
        return Verdict("from zero", f"{worse}: no policy from zero can be as fast (p99 >= {floor:.1f} s)")
    if is_slower and not is_dearer and dearer(theirs["usd_on_demand"], mine["usd_on_demand"]):
        return Verdict("trade", f"{worse}, {theirs['usd_on_demand'] / mine['usd_on_demand']:.2f}x cheaper")
    if is_dearer and not is_slower and slower(theirs["p99_s"], mine["p99_s"]):
        extra = mine["usd_on_demand"] / theirs["usd_on_demand"] - 1
        return Verdict("trade", f"{worse} (+{extra:.1%}), p99 {theirs['p99_s'] / max(mine['p99_s'], 1e-9):.1f}x shorter")
    return Verdict("dominated", worse)


def verdicts(rows: dict[str, dict], ours: str, floor: float | None = None) -> dict[str, Verdict]:
    """{peer: how ours compares with it}, for every peer in `rows`; `floor`: from_zero_floor."""
    return {peer: verdict(rows[ours], row, floor) for peer, row in rows.items() if peer != ours}


DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


def worker_rate(out: Path) -> float:
    """One worker's images a second: the service's rate on one worker core in the latest bench
    (<out>/bench.json, else docs/bench.json: 4 solo processes, the default runtime)."""
    for folder in (out, DOCS):
        if (folder / "bench.json").exists():
            return json.loads((folder / "bench.json").read_text())["modes"]["service"]["images_per_s"]
    raise FileNotFoundError("no bench.json: run `python -m daas bench` first")


def scaling_report(out: Path) -> Path | None:
    """The scaling bench's latest report (<out>/scaling.json, else docs/scaling.json)."""
    return next((folder / "scaling.json" for folder in (out, DOCS) if (folder / "scaling.json").exists()), None)


def compared(trace: Trace, boot: float, rate: float, prices: dict) -> dict:
    """Every policy on one trace at one boot time, priced, and how the new policy compares."""
    rows = {p.name: priced(simulate(trace, p, boot, rate), trace, prices) for p in policies()}
    floor = from_zero_floor(trace, boot, rate)
    judged = verdicts(rows, BootAware.name, floor)
    return {"trace": trace.name, "images": trace.images, "boot_s": boot, "rows": rows, "from_zero_floor_p99_s": floor,
            "not_better_than": {peer: v.words for peer, v in judged.items()},
            "loss_kinds": {peer: v.kind for peer, v in judged.items()}}


def run(out: Path, rate: float, prices: dict = PRICES, scaling_report: Path | None = None) -> dict:
    report = {"rate_images_per_s": rate, "prices": prices, "maximum_workers": MAXIMUM,
              "idle_timeout_s": IDLE_TIMEOUT, "traces": [], "tuning": []}
    for trace in traces():
        for boot in BOOTS:
            report["traces"].append(compared(trace, boot, rate, prices))
    report["losses"] = losses(report["traces"])
    report["tuning"] = tune(rate, prices)
    report["chosen"] = chosen(report["tuning"])
    if scaling_report and scaling_report.exists():
        report["model_check"] = check_against(json.loads(scaling_report.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "simulate.png")
    return report


def losses(blocks: list[dict]) -> dict[str, int]:
    """How many comparisons ours loses over every trace and boot, by kind (see Verdict)."""
    kinds = [kind for block in blocks for kind in block["loss_kinds"].values() if kind]
    return {"compared": sum(len(block["loss_kinds"]) for block in blocks), "lost": len(kinds),
            **{kind: kinds.count(kind) for kind in ("from zero", "trade", "dominated")}}


def tune(rate: float, prices: dict, targets: tuple[float, ...] = (15.0, 30.0, 60.0),
         work_per_boot: tuple[float, ...] = (1.0, 2.0, 3.0)) -> list[dict]:
    """The boot-aware policy's two constants over every trace and boot: for each pair, its total
    cost, the sum of its p99s and how many comparisons with a peer it loses (slower p99 or dearer,
    see `verdicts`). The defaults (DAAS_SCALE_DRAIN_TARGET, daas.scaling.WORK_PER_BOOT) are the
    pair `chosen` picks."""
    peers = {(trace.name, boot): {p.name: priced(simulate(trace, p, boot, rate), trace, prices) for p in policies()[1:]}
             for trace in traces() for boot in BOOTS}
    table = []
    for target in targets:
        for value in work_per_boot:
            cost, lost, p99 = 0.0, 0, 0.0
            for trace in traces():
                for boot in BOOTS:
                    ours = priced(simulate(trace, BootAware(target, value), boot, rate), trace, prices)
                    rows = {BootAware.name: ours, **peers[(trace.name, boot)]}
                    cost += ours["usd_on_demand"]
                    p99 += ours["p99_s"]
                    lost += sum(bool(v.kind) for v in verdicts(rows, BootAware.name).values())
            table.append({"drain_target_s": target, "work_per_boot": value, "usd_on_demand": cost,
                          "p99_sum_s": p99, "comparisons_lost": lost})
    return table


def chosen(tuning: list[dict]) -> dict:
    """The constants the table picks: fewest comparisons lost; of those, costs within 1% of the
    cheapest count as equal (as in `verdicts`), and the lowest sum of p99s wins among them."""
    fewest = min(row["comparisons_lost"] for row in tuning)
    tied = [row for row in tuning if row["comparisons_lost"] == fewest]
    cheapest = min(row["usd_on_demand"] for row in tied)
    return min((row for row in tied if row["usd_on_demand"] <= cheapest * 1.01), key=lambda row: row["p99_sum_s"])


def check_against(measured: dict, images: int = 100) -> dict:
    """Replay the scaling bench's elastic run of `images` (from zero workers, at most its maximum,
    its tick interval) with what was measured apart from that run: the boot is the median of the
    launch-to-first-heartbeat times the controller watched over the bench's elastic runs, the rate
    is the fixed warm worker's over the same images. Simulated and measured time to the last label."""
    run_ = next(r for r in measured["runs"] if r["images"] == images)
    rate = run_["fixed"]["images"] / run_["fixed"]["seconds"]
    boot = statistics.median(measured["observed_boots_s"])
    policy = BootAware()
    policy.maximum = measured["settings"]["elastic"]["max"]
    policy.interval = measured["settings"]["elastic"]["scale_interval_s"]
    simulated = simulate(Trace("elastic", [(0.0, images)], 0.0), policy, boot, rate)["last_label_s"]
    observed = run_["elastic"]["seconds"]
    return {"images": images, "boot_s": boot, "rate_images_per_s": rate, "simulated_s": simulated,
            "measured_s": observed, "ratio": simulated / observed}


def format_report(report: dict) -> str:
    lines = [f"one worker: {report['rate_images_per_s']:.1f} images/s; at most {report['maximum_workers']} "
             f"workers; {report['prices']['instance_type']} at ${report['prices']['on_demand_per_h']}/h on demand, "
             f"${report['prices']['spot_per_h']}/h spot ({report['prices']['dated']})"]
    for block in report["traces"]:
        lines.append(f"\n{block['trace']} — {block['images']:,} images, boot {block['boot_s']:.0f} s; no policy "
                     f"from zero has a p99 under {block['from_zero_floor_p99_s']:.1f} s")
        lines.append(f"  {'policy':<34}{'inst-h':>8}{'$ od':>9}{'$ spot':>9}{'p50 s':>9}{'p99 s':>9}"
                     f"{'img/$':>10}  new policy vs it")
        for name, row in block["rows"].items():
            said = "" if name == BootAware.name else (block["not_better_than"][name] or "ok")
            lines.append(f"  {name:<34}{row['instance_hours']:>8.2f}{row['usd_on_demand']:>9.3f}{row['usd_spot']:>9.3f}"
                         f"{row['p50_s']:>9.1f}{row['p99_s']:>9.1f}{row['images_per_usd']:>10,.0f}  {said}")
    n = report["losses"]
    lines.append(f"\nthe new policy is not at least as good in {n['lost']} of {n['compared']} comparisons: "
                 f"{n['from zero']} where no policy from zero can be as fast, {n['trade']} trades of cost "
                 f"against p99, {n['dominated']} worse on one and no better on the other")
    lines.append("\nthe policy's constants (drain target s, work per boot): total $ on demand, sum of p99s, "
                 "comparisons lost")
    lines += [f"  {t['drain_target_s']:>4.0f} s, {t['work_per_boot']:.1f}: ${t['usd_on_demand']:.2f}, "
              f"{t.get('p99_sum_s', 0):,.0f} s, {t['comparisons_lost']}" for t in report["tuning"]]
    pick = report["chosen"]
    lines.append(f"  chosen: {pick['drain_target_s']:.0f} s, {pick['work_per_boot']:.1f} (in use: "
                 f"{DRAIN_TARGET:.0f} s, {scaling.WORK_PER_BOOT:.1f})")
    if "model_check" in report:
        c = report["model_check"]
        lines.append(f"model check: {c['images']} images from zero, boot {c['boot_s']:.1f} s, "
                     f"{c['rate_images_per_s']:.1f} images/s: simulated {c['simulated_s']:.1f} s, "
                     f"measured {c['measured_s']:.1f} s (ratio {c['ratio']:.2f})")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for b in report["traces"] for n in b["rows"]))
    trace_names = list(dict.fromkeys(b["trace"] for b in report["traces"]))
    figure, axes = plt.subplots(2, math.ceil(len(trace_names) / 2), figsize=(16, 9))
    markers, labelled = dict(zip(names, "o^sDv")), set()
    for ax, trace in zip(axes.flat, trace_names):
        for block in (b for b in report["traces"] if b["trace"] == trace):
            colour = plt.cm.viridis(BOOTS.index(block["boot_s"]) / len(BOOTS)) if block["boot_s"] in BOOTS else "k"
            for name, row in block["rows"].items():
                ax.scatter(row["usd_on_demand"], row["p99_s"], marker=markers[name], c=[colour],
                           label=None if name in labelled else name)
                labelled.add(name)
        ax.set(title=trace, xlabel="$ on demand", ylabel="p99 upload to label (s)", xscale="log", yscale="log")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle("cost and p99 by policy (colour: boot 5, 60, 120, 180 s, dark to light)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


OUTPUTS = ("simulate.json", "simulate.png")  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench simulate` (daas.bench.main prints it)."""
    return run(out, worker_rate(out), scaling_report=scaling_report(out))
