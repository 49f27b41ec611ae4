"""kombu's SQS transport with SNS fanout turned on for Celery's events and remote control.

Why: kombu 5.7 can fan out through SNS (`supports_fanout`), but its SQS transport declares only
direct exchanges, so Celery switches remote control off and publishes events to a topic exchange
whose bindings live in each process: Flower sees no workers and no tasks. This subclass

- declares fanout support, so the worker's pidbox (inspect/ping) starts;
- treats the event exchange (a topic exchange in Celery) as fanout: every receiver binds '#';
- routes remote-control replies to the caller's reply queue (its binding exists only there);
- deletes without an event loop for synchronous consumers (the `inspect` CLI, Flower's thread);
- emulates AMQP auto-delete: per-process queues (pidbox, event receivers) and their SNS
  subscriptions are removed when the process closes its channel or exits. What a killed process
  leaves behind is swept by `daas.control.housekeeping`, which knows a live owner by the lease it
  renews on its queues (daas.leases) from a thread of this process. A queue deleted so is gone for
  the channel: a consumer thread still running (Flower's, at exit) neither re-creates it nor fails
  acking what it received from it.

It also mends two stalls in kombu's event loop (`_fire_timers_without_stalling`,
`_complete_each_request_alone`) and records when each queue was last polled (`seconds_since_poll`),
which the watchdog of every consuming process reads.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from functools import cached_property
from queue import Empty

from botocore.exceptions import ClientError
from kombu.asynchronous.http.curl import CurlClient
from kombu.asynchronous.hub import Hub
from kombu.transport import SQS

from daas import leases
from daas.aws import partition

log = logging.getLogger(__name__)
_channels: "weakref.WeakSet[Channel]" = weakref.WeakSet()
_channels_lock = threading.Lock()  # channels are opened on several threads (Flower: its API's inspect calls)
_last_poll: dict[str, float] = {}  # queue name -> monotonic time its latest ReceiveMessage completed


def seconds_since_poll(queue: str) -> float | None:
    """Seconds since a ReceiveMessage on `queue` last completed in this process (None: never)."""
    at = _last_poll.get(queue)
    return None if at is None else time.monotonic() - at


def is_reply_exchange(exchange: str) -> bool:
    return exchange.startswith("reply.") and exchange.endswith(".pidbox")


class Channel(SQS.Channel):
    def __init__(self, *args, **kwargs):
        self._auto_delete_queues: set[str] = set()
        self._deleted_queues: set[str] = set()  # auto-delete queues this channel removed
        self._deleting = threading.Lock()  # at exit, and by a thread closing the channel meanwhile
        self._drain_timeout: float | None = None
        super().__init__(*args, **kwargs)
        with _channels_lock:
            _channels.add(self)

    @cached_property
    def predefined_exchanges(self) -> dict:
        """kombu's predefined exchanges: the stack's own topics (daas.broker.fanout_topics), so that
        kombu never creates or tags a topic. Made on first use: their ARNs need the account."""
        topics = self.transport_options.get("daas_topics")
        if not topics:
            return super().predefined_exchanges
        account = self.transport_options.get("daas_account") or self._new_boto_client(
            service="sts", region=self.region, access_key_id=self.conninfo.userid,
            secret_access_key=self.conninfo.password).get_caller_identity()["Account"]
        arn = f"arn:{partition(self.region)}:sns:{self.region}:{account}"
        return {exchange: {"arn": f"{arn}:{name}"} for exchange, name in topics.items()}

    def exchange_declare(self, exchange=None, type="direct", *args, **kwargs):
        if type == "topic" and exchange in self.transport_options.get("fanout_topic_exchanges", ()):
            type = "fanout"
        return super().exchange_declare(exchange, type, *args, **kwargs)

    def _lookup(self, exchange, routing_key, default=None):
        queues = super()._lookup(exchange, routing_key, default)
        if queues or not is_reply_exchange(exchange):
            return queues
        name = self.canonical_queue_name(f"{routing_key}.{exchange}")  # kombu.pidbox's reply queue
        try:  # never re-create a reply queue its caller already deleted
            self._queue_cache[name] = self.sqs().get_queue_url(QueueName=name)["QueueUrl"]
        except ClientError:
            return []
        return [f"{routing_key}.{exchange}"]

    def drain_events(self, timeout=None, callback=None, **kwargs):
        self._drain_timeout = timeout
        try:
            return super().drain_events(timeout=timeout, callback=callback, **kwargs)
        finally:
            self._drain_timeout = None

    def _receive_message(self, queue, max_number_of_messages=1, wait_time_seconds=None):
        # `inspect` waits `timeout` for replies; do not long-poll its reply queue much longer.
        if self._drain_timeout is not None and queue.endswith(".pidbox") and ".reply." in queue:
            wait_time_seconds = max(1, min(int(self._drain_timeout + 0.999),
                                           wait_time_seconds or self.wait_time_seconds))
        return super()._receive_message(queue, max_number_of_messages, wait_time_seconds)

    def _new_queue(self, queue, **kwargs):
        # kombu re-creates a queue it cannot find. One this channel deleted at exit is gone for good:
        # what a receive in flight then returns (Flower's event thread) went with it.
        if queue in self._deleted_queues:
            raise Empty()
        return super()._new_queue(queue, **kwargs)

    def _get(self, queue):
        # The synchronous receive (Flower's event thread, `inspect`): on a queue deleted at exit, an
        # empty long poll, so that the thread neither spins nor fails while the interpreter ends.
        if queue in self._deleted_queues:
            time.sleep(self.wait_time_seconds)
            raise Empty()
        return super()._get(queue)

    def _on_messages_ready(self, queue, qname, messages):
        _last_poll[qname] = time.monotonic()  # every completed long poll, empty ones too
        if qname in self._deleted_queues:  # a poll that outlived its queue's deletion: they went with it
            return 0
        return super()._on_messages_ready(queue, qname, messages)

    def _delete_message(self, queue_name, message):
        if self.hub is None:  # kombu deletes through the pycurl client, which needs an event loop
            return self.sqs().delete_message(QueueUrl=self._new_queue(queue_name),
                                             ReceiptHandle=message["ReceiptHandle"])
        return super()._delete_message(queue_name, message)

    def queue_declare(self, queue=None, passive=False, **kwargs):
        declared = super().queue_declare(queue, passive, **kwargs)
        if not passive and (kwargs.get("auto_delete") or kwargs.get("exclusive")):
            self._auto_delete_queues.add(declared.queue)
            self.renew_leases([declared.queue])
            _Renewer.ensure_running(self.transport_options.get("daas_lease_interval", 60.0))
        return declared

    @property
    def stack(self) -> str | None:
        """The stack whose per-process queues this channel tags (see daas.broker.transport_options)."""
        return (self.transport_options.get("queue_tags") or {}).get(leases.STACK_TAG)

    def renew_leases(self, queues=None) -> None:
        """Renew the lease of this process's per-process queues (all of them by default)."""
        if self.stack is None or self.closed:
            return
        for queue in list(self._auto_delete_queues if queues is None else queues):
            try:
                leases.renew(self.sqs(), self._resolve_queue_url(queue), self.stack)
            except Exception as exc:  # the next renewal tries again; five may fail in a row
                log.warning("could not renew the lease of queue %r: %r", queue, exc)

    def _delete(self, queue, exchange=None, *args, **kwargs):
        self._auto_delete_queues.discard(queue)
        super()._delete(queue, exchange, *args, **kwargs)  # DeleteQueue, and Unsubscribe for fanout
        self._queue_cache.pop(self.canonical_queue_name(queue), None)  # kombu pops the raw name

    def delete_auto_queues(self) -> None:
        # At exit this runs on the main thread while Flower's event thread may close the same
        # channel (connection None from then on): one of them deletes, the other finds nothing.
        with self._deleting:
            if self.connection is None:
                return
            for queue in list(self._auto_delete_queues):
                self._deleted_queues.add(queue)  # before DeleteQueue: a receive in flight may return
                try:
                    if list(self.state.queue_bindings(queue)):
                        self.queue_delete(queue)
                    else:
                        self._delete(queue)
                except Exception as exc:  # best effort at shutdown; the sweeper gets the rest
                    log.warning("could not delete queue %r: %r", queue, exc)
                self._auto_delete_queues.discard(queue)

    def close(self):
        if not self.closed:
            self.delete_auto_queues()
        super().close()


class _Renewer(threading.Thread):
    """One thread per process renews the leases of every open channel's per-process queues, every
    DAAS_QUEUE_LEASE_INTERVAL seconds. A thread, not the event loop: a solo worker runs its task
    inside the loop, and a long task must not make its pidbox queue look dead."""

    _pid: int | None = None
    _lock = threading.Lock()

    def __init__(self, interval: float):
        super().__init__(name="daas-leases", daemon=True)
        self.interval = interval

    @classmethod
    def ensure_running(cls, interval: float) -> None:
        with cls._lock:  # one per process, after a fork too
            if cls._pid != os.getpid():
                cls._pid = os.getpid()
                cls(interval).start()

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            renew_all()


def open_channels() -> list[Channel]:
    """A snapshot of this process's open channels. Iterating the set while another thread opens a
    channel raises "Set changed size during iteration", which would end the renewer thread: the
    most likely reason why, once in a 30-minute soak, Flower's live event queue lost its lease and
    was swept (Flower opens channels on its API's threads too; the run's logs were not kept)."""
    with _channels_lock:
        return list(_channels)


def renew_all() -> None:
    """One round of lease renewals; nothing that goes wrong in it ends the renewer."""
    for channel in open_channels():
        try:
            channel.renew_leases()
        except Exception as exc:  # the next round tries again (five may fail in a row)
            log.warning("could not renew the leases of a channel: %r", exc)


@atexit.register
def _delete_auto_queues_at_exit() -> None:
    # Flower's event thread is a daemon and never closes its channel.
    for channel in open_channels():
        channel.delete_auto_queues()


def _fire_timers_without_stalling(original):
    """kombu's event loop runs timers, then polls its sockets for the delay the timers return (up
    to 1 s). When a timer callback schedules work with call_soon (the SQS client's periodic check
    does, for the next ReceiveMessage), that work waits out the whole poll: a worker finishing its
    task at 60 ms idled until the next second. Polling without a wait while work is ready keeps the
    loop busy only as long as there is something to do. Measured on 2 cores: one worker went
    from about 2.5 to 10 images/s."""

    def fire_timers(self, *args, **kwargs):
        delay = original(self, *args, **kwargs)
        return 0 if self._ready else delay

    fire_timers.fixes_ready_stall = True
    return fire_timers


if not getattr(Hub.fire_timers, "fixes_ready_stall", False):
    Hub.fire_timers = _fire_timers_without_stalling(Hub.fire_timers)


def _complete_each_request_alone(original):
    """kombu's curl client completes the requests that finished together in one loop; when one
    completion raises (a DeleteMessage answered 400 QueueDoesNotExist, say), the rest of that batch
    is dropped, and with it, possibly, a consumer's next ReceiveMessage: that queue is never polled
    again while the process looks alive. This is how the controller stopped consuming for good
    (issue 11). Each completion now fails on its own, logged, and the others complete."""

    def _process(self, curl, *args, **kwargs):
        try:
            return original(self, curl, *args, **kwargs)
        except Exception:  # the request's own callback failed; the curl handle is already free
            log.exception("an SQS request failed; the requests that completed with it go on")

    _process.completes_alone = True
    return _process


if not getattr(CurlClient._process, "completes_alone", False):
    CurlClient._process = _complete_each_request_alone(CurlClient._process)


class Transport(SQS.Transport):
    Channel = Channel
    implements = SQS.Transport.implements.extend(exchange_type=frozenset(["direct", "fanout"]))
