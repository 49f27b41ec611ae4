"""A consuming process's watchdog: it notices when the process stops making progress, and ends it.

Every process that consumes a queue (each worker, the controller) runs one watchdog thread. Progress
is a completed poll of the process's own queue (daas.transport records each one; an idle consumer
long-polls every CONSUMER_LONG_POLL, 10 s) or a task running for less than DAAS_TASK_TIME_LIMIT. With no progress for
DAAS_STALL_TIMEOUT seconds the watchdog logs why and exits the process, so that its supervisor
(systemd on AWS, `daas up` or the controller locally) starts a fresh one, and SQS hands what it held
to another consumer. This catches a consumer that kombu stopped polling while the process looked
alive, the outage of issue 11.

While the process is healthy the watchdog pings systemd's watchdog (sd_notify `WATCHDOG=1`, when
NOTIFY_SOCKET is set), so that systemd also ends a process hung so badly that this thread cannot
run; beside it, each on a thread of its own, run its duties (a worker's heartbeat record and the
visibility of the messages it holds, see daas.lifecycle).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from celery.worker import state as worker_state

from daas import transport
from daas.config import STARTUP_TIMEOUT

log = logging.getLogger(__name__)
EXIT_STALLED = 75  # EX_TEMPFAIL: a supervisor restarts it (systemd's Restart=on-failure too)


def notify(message: str) -> bool:
    """Send `message` (e.g. READY=1, WATCHDOG=1) to systemd's notify socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def stalled_for(now: float, ready: float, last_poll: float | None, task_starts: Iterable[float],
                task_time_limit: float) -> float:
    """Seconds since the process last made progress: since its latest completed poll (or since it
    became ready to consume), unless a task is running that has not yet run for task_time_limit
    seconds (0 then). All times are epoch seconds."""
    if any(now - start < task_time_limit for start in task_starts):
        return 0.0
    return now - max(ready, last_poll or ready)


def snapshot(*requests) -> list | None:
    """A copy of Celery's sets of requests (worker_state.active_requests, ...), taken from another
    thread than the consumer's; None if they kept changing under us."""
    for _ in range(3):
        try:
            return [request for requests_ in requests for request in list(requests_)]
        except RuntimeError:  # "set changed size during iteration"
            continue
    return None


def running_task_starts() -> list[float]:
    """When each task this process is running started (epoch seconds); now, if unknown."""
    running = snapshot(worker_state.active_requests)
    return [time.time()] if running is None else [request.time_start or time.time() for request in running]


@dataclass
class Duty:
    """Something done every `every` seconds beside the watchdog, on a thread of its own, until the
    process exits: it exits when it stalls. `last`: when its latest round started (monotonic)."""

    every: float
    run: Callable[[], None]
    last: float = field(default=0.0)

    @property
    def name(self) -> str:
        return getattr(self.run, "__name__", repr(self.run))


class Watchdog(threading.Thread):
    """Started with the process; `ready` is called once it consumes. Until then the process has
    STARTUP_TIMEOUT seconds (loading the model took 10 s on a loaded 2-core machine), as systemd
    gives a unit TimeoutStartSec."""

    def __init__(self, queue: str, stall_timeout: float, task_time_limit: float, duties: list[Duty] = ()):
        super().__init__(name="daas-watchdog", daemon=True)
        self.queue, self.stall_timeout, self.task_time_limit = queue, stall_timeout, task_time_limit
        self.duties = list(duties)
        self.started, self.ready_at = time.time(), None
        self.tick = min(5.0, stall_timeout / 4)  # the duties keep their own time (start_duties)
        self.stopping = threading.Event()

    def ready(self, **_) -> None:
        self.ready_at = time.time()
        notify("READY=1")

    def stalled_for(self) -> float:
        now = time.time()
        if self.ready_at is None:
            return max(0.0, now - self.started - (STARTUP_TIMEOUT - self.stall_timeout))
        since_poll = transport.seconds_since_poll(self.queue)
        return stalled_for(now, self.ready_at, None if since_poll is None else now - since_poll,
                           running_task_starts(), self.task_time_limit)

    def run(self) -> None:
        self.start_duties()
        while not self.stopping.wait(self.tick):
            stalled = self.stalled_for()
            if stalled > self.stall_timeout:
                log.error("no progress for %.0f s (%s): exiting so that a fresh process takes over", stalled,
                          f"no poll of {self.queue} completed, no task running for less than "
                          f"{self.task_time_limit:.0f} s" if self.ready_at else
                          f"not consuming {STARTUP_TIMEOUT:.0f} s after its start")
                logging.shutdown()
                os._exit(EXIT_STALLED)
            notify("WATCHDOG=1")

    def start_duties(self) -> None:
        """Each duty on a thread of its own: one waiting on a slow S3 or SQS must hold up neither
        the stall check and systemd's watchdog pings nor the other duties. Issue 16: on one shared
        thread, a heartbeat PUT that S3 held for 30 s held back the visibility extension, and a
        second worker got the message of the task in hand and ran it again."""
        for duty in self.duties:
            threading.Thread(target=self.run_duty_forever, args=(duty,), name=f"daas-{duty.name}",
                             daemon=True).start()

    def run_duty_forever(self, duty: Duty) -> None:
        """A round of `duty` every `duty.every` seconds, from start to start: a round that ran
        over its period is followed by the next at once, never a whole period later."""
        while not self.stopping.wait(max(0.0, duty.last + duty.every - time.monotonic())):
            duty.last = time.monotonic()
            try:
                duty.run()
            except Exception as exc:  # a duty that fails now runs again next round
                log.warning("%s failed: %r", duty.name, exc)

    def stop(self) -> None:
        self.stopping.set()
