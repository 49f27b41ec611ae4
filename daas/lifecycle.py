"""The steps of a worker process's life, each a small piece, all connected by `install`:

- warm up: load the model, run it once and build the S3 client before the first task;
- register (local workers): `<pid>`, then `<pid>.ready` files that the local provider counts;
- keep held messages invisible: a short visibility timeout, pushed back while a task runs;
- heartbeat: a record in the output bucket (daas.fleet) and systemd's watchdog, while healthy;
- watchdog: exit when the consumer stops making progress (daas.watchdog);
- retire: stop consuming when idle, past the maximum lifetime, asked by the controller (a steady
  load that fewer workers carry: daas.scaling.surplus) or told by EC2 that the instance is going (a
  spot interruption notice, a rebalance recommendation: daas.interruption), shut down warm;
- power off after retiring (DAAS_POWEROFF_COMMAND; on EC2 the instance then terminates).
"""
from __future__ import annotations

import functools
import logging
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

from celery import bootsteps, signals
from celery.worker import state as worker_state

from daas import config, fleet, interruption, storage
from daas.aws import duty_client
from daas.config import CONSUMER_LONG_POLL, IMDS_POLL
from daas.watchdog import Duty, Watchdog, notify, snapshot

log = logging.getLogger(__name__)


def install(app, cfg: config.Settings, node: str, register_in: str | None = None) -> None:
    """Connect every lifecycle step to a worker about to start (the one list of them)."""
    signals.worker_process_init.connect(warm_up, weak=False)
    if register_in:
        register(Path(register_in))
    heartbeat = Heartbeat(cfg, node)
    asked = interruption.Watcher(heartbeat.retire_request, heartbeat.goodbye, "the controller")
    duties = [Duty(cfg.extend_every, VisibilityKeeper(cfg).extend), Duty(cfg.heartbeat_interval, heartbeat.beat),
              Duty(cfg.heartbeat_interval, asked.check)]
    _leave_requests[:] = [asked]
    if cfg.imds_endpoint:
        notices = interruption.Watcher(functools.partial(interruption.ask, cfg.imds_endpoint), heartbeat.goodbye,
                                       "the instance metadata")
        duties.append(Duty(IMDS_POLL, notices.check))
        _leave_requests.append(notices)
    watchdog = Watchdog(cfg.queue, cfg.stall_timeout, cfg.task_time_limit, duties=duties)
    signals.worker_init.connect(lambda **_: watchdog.start(), weak=False)
    signals.worker_ready.connect(watchdog.ready, weak=False)
    signals.worker_ready.connect(heartbeat.ready, weak=False)
    signals.task_prerun.connect(heartbeat.task_started, weak=False)
    signals.task_postrun.connect(heartbeat.task_done, weak=False)
    signals.worker_shutdown.connect(lambda **_: (watchdog.stop(), heartbeat.forget()), weak=False)
    app.steps["consumer"].add(Retirement)


# -- warm up ---------------------------------------------------------------------------------------
def warm_up(**_) -> None:
    """Make the process ready before it takes its first task: load the model and run it once (the
    first forward pass costs several later ones), and build the S3 client (botocore parses its
    service model then). Measured: a worker's first task cost 150-190 ms of CPU per image without
    this, 35-50 ms with it."""
    from PIL import Image

    from daas.pipeline import classifier

    classifier().classify([Image.new("RGB", (256, 256))])
    storage.warm_up(config.load())


# -- register (local provider) ---------------------------------------------------------------------
def register(folder: Path) -> None:
    """`<pid>` while starting, plus `<pid>.ready` once consuming (see daas.providers.LocalProvider)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    signals.worker_ready.connect(lambda **_: (folder / f"{os.getpid()}.ready").touch(), weak=False)


# -- keep held messages invisible ------------------------------------------------------------------
def held_messages() -> dict[str, str] | None:
    """{receipt handle: queue URL} of every message this worker holds (running or prefetched);
    None if Celery's sets could not be read this time."""
    requests = snapshot(worker_state.active_requests, worker_state.reserved_requests)
    if requests is None:
        return None
    held = {}
    for request in requests:
        info = request.message.delivery_info
        if "sqs_message" in info:
            held[info["sqs_message"]["ReceiptHandle"]] = info["sqs_queue"]
    return held


class VisibilityKeeper:
    """Push back the visibility timeout of the messages this worker holds, every quarter of it.

    SQS hides a received message for DAAS_VISIBILITY_TIMEOUT seconds (20). A task that takes longer
    must not reappear for another worker (it would run twice), and a killed worker's messages should
    come back quickly, not after minutes. So the timeout is short, and every message that was already
    held at the previous round is hidden for another full timeout, for at most DAAS_TASK_TIME_LIMIT
    seconds; tasks shorter than a round (nearly all: a chunk takes well under a second) cost nothing.

    The rounds run on a thread of their own (daas.watchdog), and their calls give up within a round
    (daas.aws.duty_client): a slow call is followed by the next round at once, so a message is
    extended again at most half a timeout after its previous extension, whatever S3 or SQS do (for
    timeouts of 8 s and more, where a call fits in a round; see test_lifecycle).
    """

    def __init__(self, cfg: config.Settings):
        self.cfg, self.first_seen = cfg, {}

    def extend(self) -> None:
        now, held = time.monotonic(), held_messages()
        if held is None:  # next round (a quarter of the timeout) will do
            return
        due: dict[str, list[str]] = {}
        for handle, url in held.items():
            seen = self.first_seen.setdefault(handle, now)
            if seen < now and now - seen < self.cfg.task_time_limit:
                due.setdefault(url, []).append(handle)
        self.first_seen = {handle: seen for handle, seen in self.first_seen.items() if handle in held}
        sqs = duty_client("sqs", self.cfg, self.cfg.extend_every)
        for url, handles in due.items():
            for start in range(0, len(handles), 10):
                entries = [{"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": self.cfg.visibility_timeout}
                           for i, handle in enumerate(handles[start:start + 10])]
                # Entries that fail were acknowledged meanwhile (the task ended): nothing to keep.
                sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)


# -- heartbeat -------------------------------------------------------------------------------------
class Heartbeat:
    """The worker's record in the output bucket (daas.fleet), written once it consumes and then
    every DAAS_HEARTBEAT_INTERVAL while it makes progress; deleted when it exits cleanly. A PUT gives
    up within a round (daas.aws.duty_client): one slow PUT delays the next beat by a round at most,
    instead of leaving the record to age until the controller ends a healthy worker (issue 16).
    The record counts the tasks, their images and the seconds spent in them: the controller's
    scaling policy learns a worker's tasks per second from them (daas.observed)."""

    def __init__(self, cfg: config.Settings, node: str):
        self.cfg, self.node, self.started, self.consuming = cfg, node, time.time(), False
        self.tasks, self.images, self.busy_s, self.task_began = 0, 0, 0.0, None
        self.leaving = ""

    def task_started(self, **_) -> None:
        self.task_began = time.monotonic()

    def task_done(self, retval=None, **_) -> None:
        if self.task_began is not None:
            self.busy_s += time.monotonic() - self.task_began
            self.tasks += 1
            self.images += retval if isinstance(retval, int) else 0
            self.task_began = None

    def ready(self, **_) -> None:
        self.consuming = True
        self.beat()

    def beat(self) -> None:
        if self.consuming:
            fleet.beat(self.cfg, self.node, {"node": self.node, "pid": os.getpid(), "host": socket.gethostname(),
                                             "started": self.started, "beat": time.time(),
                                             "tasks": self.tasks, "images": self.images,
                                             "busy_s": round(self.busy_s, 3),
                                             **({"leaving": self.leaving} if self.leaving else {})},
                       duty_client("s3", self.cfg, self.cfg.heartbeat_interval))

    def goodbye(self, reason: str) -> None:
        """Say in the record why this worker is leaving (it is deleted when the worker exits)."""
        self.leaving = reason
        try:
            self.beat()
        except Exception as exc:  # the exit deletes the record anyway
            log.warning("could not write the goodbye in the heartbeat record: %r", exc)

    def retire_request(self) -> str | None:
        """Why the controller asked this process to retire (daas.fleet.retire_request), or None."""
        if not self.consuming:
            return None
        return fleet.retire_request(self.cfg, fleet.record_name(self.cfg, self.node),
                                    duty_client("s3", self.cfg, self.cfg.heartbeat_interval))

    def forget(self) -> None:
        notify("STOPPING=1")
        if self.consuming:
            self.consuming = False
            try:
                fleet.forget(self.cfg, fleet.record_name(self.cfg, self.node))
            except Exception as exc:  # the controller forgets it once it is stale
                log.warning("could not delete the heartbeat record: %r", exc)


# -- retire ----------------------------------------------------------------------------------------
def retirement(now: float, last_busy: float, started: float, *, idle_timeout: float,
               max_lifetime: float) -> str | None:
    """Why a worker should stop taking work now (None: it should not). Monotonic seconds."""
    if idle_timeout > 0 and now - last_busy >= idle_timeout:
        return f"idle for {idle_timeout:.0f} s"
    if max_lifetime > 0 and now - started >= max_lifetime:
        return f"served for {max_lifetime / 3600:.1f} h (DAAS_MAX_LIFETIME)"
    return None


_retired = False
_leave_requests: list[interruption.Watcher] = []  # the controller's; EC2's where DAAS_IMDS_ENDPOINT is


class Retirement(bootsteps.StartStopStep):
    """Consumer bootstep: stop consuming when `retirement` says so, then shut down warm.

    Two phases, because a long poll may be in flight when the consumer is cancelled: SQS may
    already have handed it a message. kombu makes such messages visible again when the poll
    returns, which it must be allowed to do: the worker stops only once the poll is over.
    Stopping at once would leave the message invisible for the whole visibility timeout.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.cfg = config.load()
        # Never idle out sooner than the visibility timeout: the images of a worker killed while
        # this one was busy come back within it, and this one should still be there to take them
        # (measured in the soak: idling out after 15 s, the pool went to zero with a killed
        # worker's task invisible, and the task waited 43 s for a new worker to boot).
        self.idle_timeout = max(self.cfg.idle_timeout, self.cfg.visibility_timeout) if self.cfg.idle_timeout else 0
        self.started = self.last_busy = time.monotonic()
        self.cancelled_at: float | None = None
        self.timer_ref = None

    def start(self, consumer) -> None:
        self.last_busy = time.monotonic()
        # The solo pool runs each task inside the event loop, so `check` never sees one active:
        # every finished task counts as activity too.
        signals.task_postrun.connect(self.busy, weak=False)
        every = min(1.0, (self.idle_timeout or 4.0) / 4)
        self.timer_ref = consumer.timer.call_repeatedly(every, self.check, (consumer,))

    def busy(self, **_) -> None:
        self.last_busy = time.monotonic()

    def check(self, consumer) -> None:
        global _retired
        now = time.monotonic()
        if self.cancelled_at is None:
            if worker_state.active_requests or worker_state.reserved_requests:
                self.last_busy = now
            reason = next((w.notice for w in _leave_requests if w.notice), None) or retirement(
                now, self.last_busy, self.started, idle_timeout=self.idle_timeout, max_lifetime=self.cfg.max_lifetime)
            if reason:
                log.info("%s: no longer consuming; shutting down once the last poll is over", reason)
                for queue in consumer.task_consumer.queues:
                    consumer.cancel_task_queue(queue.name)
                self.cancelled_at = now
        elif now - self.cancelled_at > CONSUMER_LONG_POLL + 1 and not worker_state.active_requests:
            _retired = True
            worker_state.should_stop = 0  # the normal warm-shutdown path, exit code 0

    def stop(self, consumer) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()


# -- power off -------------------------------------------------------------------------------------
def power_off_if_retired(cfg: config.Settings) -> None:
    """After a retirement (idle or old), run DAAS_POWEROFF_COMMAND; a crash or a stop does not."""
    if _retired and cfg.poweroff_command:
        log.info("powering off: %s", cfg.poweroff_command)
        subprocess.run(shlex.split(cfg.poweroff_command), check=False)
