"""Results pushed to the web tier, not polled: each web process's reply queue, and its result cache.

Every web process owns one SQS queue, `<stack>-replies-<uuid>`, and one thread that long-polls it.
A task it enqueues names that queue (`reply_to`); the worker that finishes the task sends the
chunk's results there as well as storing them in the output bucket (daas.tasks.classify). The
thread puts them in this process's cache and wakes the requests waiting for them: a waiting
`POST /classify` answers as soon as its label exists, and a job's status reads its results from
the cache. That is one SendMessage per chunk and a share of a batched receive and delete, where
polling the bucket cost about 38 GETs per image (issue 12). The output bucket stays the result
store: a waiter that has heard nothing for REPLY_FALLBACK_EVERY seconds looks there itself.

A reply queue lives as long as its process: deleted at exit, and, if the process was killed, swept
by the controller's housekeeping once the thread stopped renewing its lease (daas.leases). The
thread outlives any failure: a queue that disappeared is created again (and tried again, if that
fails too), so a web process never silently falls back to reading the bucket for good.
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from urllib.parse import urlsplit

from daas import leases
from daas.aws import account_id, client
from daas.config import REPLY_FALLBACK_EVERY, REPLY_LONG_POLL, Settings

log = logging.getLogger(__name__)


class ResultCache:
    """Result lists (and manifests) never change once written: each web process keeps the recent ones."""

    def __init__(self, size: int = 10_000):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get_many(self, keys: list[str]) -> dict:
        with self.lock:
            return {key: self.items[key] for key in keys if key in self.items}

    def put_many(self, found: dict) -> None:
        with self.lock:
            self.items.update(found)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


cache = ResultCache()


def queue_name(settings: Settings) -> str:
    return f"{settings.stack}-replies-{uuid.uuid4().hex}"


def is_reply_queue(settings: Settings, url: object) -> bool:
    """Whether `url` names a reply queue of this stack in the account of its classify queue (a
    task's `reply_to` is checked before a worker sends results there). The host is not compared:
    a web host and a worker may reach SQS through different endpoints (a VPC endpoint, say)."""
    if not isinstance(url, str):
        return False
    account, _, name = urlsplit(url).path.strip("/").partition("/")
    return bool(re.fullmatch(rf"{re.escape(settings.stack)}-replies-[0-9a-f]{{32}}", name)) and \
        account == account_id(settings)


def reply_message(key: str, results: list[dict], store_ms: float | None = None) -> str:
    return json.dumps({"key": key, "results": results, **({"store_ms": round(store_ms, 2)} if store_ms else {})})


class Replies:
    """This process's reply queue and its listener thread, started on first use (after a fork,
    a process starts its own)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.waiters: dict[str, set[threading.Event]] = {}  # several requests may share a chunk
        self.pid, self.url = None, None
        self.listener: threading.Thread | None = None

    def queue_url(self) -> str:
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.url, self.waiters = os.getpid(), self._create(), {}
                self.listener = threading.Thread(target=self._listen, name="daas-replies", daemon=True)
                self.listener.start()
                _open.add(self)
            return self.url

    def listening(self) -> bool:
        """False when this process's listener started and has ended (closed, or died): every
        /classify would then wait out its timeout and read the bucket. True before first use."""
        return self.pid != os.getpid() or self.listener is None or self.listener.is_alive()

    def _create(self) -> str:
        return client("sqs", self.settings).create_queue(
            QueueName=queue_name(self.settings), tags=leases.tags(self.settings.stack),
            Attributes={"MessageRetentionPeriod": "300", "ReceiveMessageWaitTimeSeconds": str(REPLY_LONG_POLL)})["QueueUrl"]

    def wait(self, key: str, fetch, timeout: float) -> list[dict] | None:
        """The result list at `key`, as soon as its reply arrives (or `fetch()` finds it in the
        bucket, tried every REPLY_FALLBACK_EVERY seconds); None after `timeout` seconds."""
        event = threading.Event()
        with self.lock:
            self.waiters.setdefault(key, set()).add(event)
        try:
            deadline, found = time.monotonic() + timeout, cache.get_many([key]).get(key)
            while found is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                woken = event.wait(min(REPLY_FALLBACK_EVERY, left))
                event.clear()
                found = cache.get_many([key]).get(key) if woken else None
                if found is None:  # silence for a while, or a reply already evicted from the cache
                    found = fetch()
                    if found is not None:
                        cache.put_many({key: found})
            return found
        finally:
            with self.lock:
                waiting = self.waiters.get(key, set())
                waiting.discard(event)
                if not waiting:
                    self.waiters.pop(key, None)

    def _listen(self) -> None:
        sqs, url, renewed = client("sqs", self.settings), self.url, time.monotonic()
        # A poll never outlasts a lease period: the lease is renewed between two polls.
        wait = max(1, min(REPLY_LONG_POLL, int(self.settings.queue_lease_interval)))
        while url == self.url:
            try:
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=wait).get("Messages", [])
                self._deliver(messages)
                if messages:
                    sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
                if time.monotonic() - renewed > self.settings.queue_lease_interval:
                    leases.renew(sqs, url, self.settings.stack)
                    renewed = time.monotonic()
            except Exception as exc:  # the endpoint restarting, or the queue gone: a new one then
                if url != self.url:  # closed meanwhile (at exit)
                    return
                log.warning("the reply listener failed: %r", exc)
                time.sleep(1)
                if queue_missing(exc):
                    url = self._replace(url)

    def _replace(self, lost: str) -> str:
        """A new queue in place of `lost`, which disappeared; `lost` again if that failed too (the
        next round tries again): the listener must never end while its process serves."""
        try:
            created = self._create()
        except Exception as exc:
            log.warning("could not create a new reply queue (tried again in a moment): %r", exc)
            return lost
        with self.lock:
            closed = self.url != lost
            if not closed:
                self.url = created
        if closed:  # the process closed its queue meanwhile (at exit): the new one goes too
            try:
                client("sqs", self.settings).delete_queue(QueueUrl=created)
            except Exception as exc:  # its lease runs out and housekeeping sweeps it
                log.warning("could not delete the reply queue: %r", exc)
        return created

    def _deliver(self, messages: list[dict]) -> None:
        replies = []
        for message in messages:  # the queue is ours, but a reply we cannot read must not stop the rest
            try:
                reply = json.loads(message["Body"])
                replies.append((reply["key"], reply["results"], reply.get("store_ms")))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("dropping an unreadable reply: %r", exc)
        cache.put_many({key: results for key, results, _ in replies})
        from daas import metrics  # the web tier's counts; workers import this module too, and need none

        for _, results, store_ms in replies:
            metrics.observe_results(results, store_ms)
        with self.lock:
            for key, _, _ in replies:
                for event in self.waiters.get(key, ()):
                    event.set()

    def close(self) -> None:
        """Delete the queue this process created (at exit); once. A forked child inherits its
        parent's object and leaves the parent's queue alone."""
        with self.lock:
            url, self.url = (self.url, None) if self.pid == os.getpid() else (None, self.url)
        if url is None:
            return
        try:
            client("sqs", self.settings).delete_queue(QueueUrl=url)
        except Exception as exc:  # the sweeper deletes it later
            log.warning("could not delete the reply queue: %r", exc)


_open: "weakref.WeakSet[Replies]" = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    """Delete this process's reply queues (at exit; housekeeping sweeps those of a killed process)."""
    for replies in list(_open):
        replies.close()


def queue_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


@functools.cache
def for_settings(settings: Settings) -> Replies:
    """The process's Replies for a stack (one per web app's settings)."""
    return Replies(settings)


def send(settings: Settings, url: str, key: str, results: list[dict], store_ms: float | None = None) -> None:
    """A worker's reply: the chunk's results (and how long storing them took), to the queue of the
    web process that enqueued it. Best effort: the results are already stored, and a waiter that
    hears nothing reads the bucket (failing here would have the chunk classified again)."""
    try:
        client("sqs", settings).send_message(QueueUrl=url, MessageBody=reply_message(key, results, store_ms))
    except Exception as exc:
        queue = url.rsplit("/", 1)[-1]
        if queue_missing(exc):  # that web process is gone
            log.info("the reply queue %s is gone; the results are in the output bucket", queue)
        else:
            log.warning("could not reply to %s (its waiters read the output bucket): %r", queue, exc)
