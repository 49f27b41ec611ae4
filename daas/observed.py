"""What the controller learns of its workers for the scaling policy (daas.scaling).

- Which workers serve, boot or retire, from the heartbeat records (daas.fleet: one LIST a tick):
  a worker with a fresh record serves; one without a record that never had one boots; one whose
  record went away after it served is retiring (its record is deleted when it stops consuming, and
  its instance takes a while to end): it is not capacity, and the policy does not wait for it.
- How long a worker takes from its launch to its first heartbeat (the median of the latest
  boots the controller watched; on EC2 instance start, cloud-init, a cold volume and the model).
- How many full tasks a second one worker finishes while busy, from the counts in the records
  (read by housekeeping, once a minute: one GET a worker): images over busy seconds, in tasks of
  DAAS_IMAGES_PER_TASK images, as a batch's are. Counting tasks instead made a worker that had
  served a trickle of one-image uploads look ten times faster at the next batch's full tasks.
- How busy each worker was since the previous housekeeping run (daas.scaling.surplus).
- How many tasks a second arrive (daas.scaling.Inflow, from the queue's depth at each tick).

Until it has seen any, the controller assumes DAAS_SCALE_BOOT_TIME and DAAS_SCALE_WORKER_RATE. What
it learned is kept in `<state>/scaling.json`, so a restarted controller does not start over.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from daas import config, scaling, state
from daas.fleet import Worker

SAMPLES = 10       # boots remembered (the median of these is the estimate)
# A heartbeat's time is its record's LastModified in a LIST, which S3 (and moto) gives in whole
# seconds: the beat was up to a second later. A boot is measured to the middle of that second, not
# its start: local boots of 1.5-2.8 s were read 0.03-0.54 s short (the `.ready` markers' times
# against the controller's figures, five boots), and the simulator's check against the scaling
# bench inherited the bias.
LAST_MODIFIED_RESOLUTION = 1.0


@dataclass(frozen=True)
class FleetView:
    ready: int
    starting: tuple[float, ...]  # seconds since each booting worker was launched
    retiring: int


class Observed:
    def __init__(self, settings: config.Settings):
        self.file = settings.state_dir / "scaling.json"
        saved = state.read_json(self.file, {})
        self.boots: list[float] = saved.get("boots", [])
        # DAAS_SCALE_WORKER_RATE is in images a second, as people think of it; tasks are full ones
        self.images_per_task = settings.images_per_task
        self.rate: float = saved.get("tasks_per_s", settings.scale_worker_rate / settings.images_per_task)
        self.counted: dict[str, tuple[float, float]] = {}  # record name: (its beat, its busy seconds) last run
        self.inflow = scaling.Inflow()
        self.default_boot = settings.scale_boot_time
        self.served: set[str] = set()     # workers seen with a heartbeat
        self.since = time.time()          # workers launched since are watched from their launch
        self.lock = threading.Lock()

    @property
    def boot(self) -> float:
        return statistics.median(self.boots) if self.boots else self.default_boot

    def view(self, workers: list[Worker], beats: dict[str, float], now: float, stale_after: float) -> FleetView:
        """Sort the provider's workers by their latest heartbeat (`beats`: {worker id: epoch seconds})
        and learn the boot time of each worker seen booting that now beats."""
        ready, starting, retiring, learned = 0, [], 0, False
        with self.lock:
            for worker in workers:
                last = beats.get(worker.id)
                if last is not None and now - last <= stale_after:
                    ready += 1
                    if worker.id not in self.served and worker.launched >= self.since:  # a boot watched whole
                        boot = max(0.0, last + LAST_MODIFIED_RESOLUTION / 2 - worker.launched)
                        self.boots = (self.boots + [boot])[-SAMPLES:]
                        learned = True
                    self.served.add(worker.id)
                elif worker.id in self.served or last is not None:
                    retiring += 1  # its record went away, or stopped: not capacity (housekeeping ends the stalled)
                else:
                    starting.append(max(0.0, now - worker.launched))
            self.served &= {worker.id for worker in workers}
        if learned:
            self.save()
        return FleetView(ready, tuple(starting), retiring)

    def learn_rates(self, records: dict[str, dict[str, dict]]) -> None:
        """Learn the full tasks a second of one worker from its processes' heartbeat records
        ({worker id: {record name: record}}; each counts `images` over `busy_s` seconds in tasks)."""
        rates = [sum(r.get("images", 0) / r["busy_s"] for r in named.values() if r.get("busy_s", 0) >= config.MIN_BUSY)
                 / self.images_per_task for named in records.values()]
        rates = [rate for rate in rates if rate > 0]
        if rates:
            with self.lock:
                self.rate = statistics.median(rates)
            self.save()

    def busy_shares(self, records: dict[str, dict[str, dict]]) -> dict[str, float | None]:
        """{worker id: the share of the time its processes were busy since the previous call},
        from their heartbeat records ({worker id: {record name: record}}); None for a worker with
        a process not seen then (it just arrived), or one that is leaving (daas.scaling.surplus
        decides nothing then)."""
        shares: dict[str, float | None] = {}
        counted = {}
        for worker_id, named in records.items():
            parts = []
            for name, record in named.items():
                counted[name] = (record.get("beat", 0.0), record.get("busy_s", 0.0))
                before = self.counted.get(name)
                elapsed = counted[name][0] - before[0] if before else 0.0
                parts.append(None if record.get("leaving") or elapsed <= 0
                             else min(1.0, max(0.0, (counted[name][1] - before[1]) / elapsed)))
            shares[worker_id] = None if None in parts or not parts else sum(parts) / len(parts)
        self.counted = counted
        return shares

    def save(self) -> None:
        with self.lock:
            state.write_json(self.file, {"boots": self.boots, "tasks_per_s": self.rate})
