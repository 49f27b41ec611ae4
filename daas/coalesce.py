"""Concurrent `POST /classify` requests share jobs and tasks: a group commit.

The original client sends 100 one-image requests at once. Sent alone, each image would be a job
of its own (a manifest PUT) and a task of its own (a send, a receive, a delete, task events, a
result PUT and a reply), six times the requests per image of a 10-image upload, for the same
work. Here each web process has one committer thread: a request that has passed the edge checks
hands its image over and waits; the committer takes every image waiting (up to DAAS_MAX_FILES,
one client's at a time: images of different API keys never share a job) and enqueues them as one
job, in tasks of up to DAAS_IMAGES_PER_TASK images. While it works, the next requests gather.
Alone, a request is enqueued at once, as before: no timer, no added latency; under a burst the
groups grow by themselves.
"""
from __future__ import annotations

import functools
import os
import queue
import threading
from dataclasses import dataclass, field

from daas.config import Settings


@dataclass
class Ticket:
    client: str
    accepted: tuple  # (image, data), checked at the edge
    done: threading.Event = field(default_factory=threading.Event)
    job_id: str = ""
    key: str = ""
    error: Exception | None = None


class Coalescer:
    def __init__(self, settings: Settings):
        self.settings, self.lock, self.pid = settings, threading.Lock(), None
        self.waiting: queue.SimpleQueue[Ticket] = queue.SimpleQueue()

    def enqueue(self, client: str, accepted: tuple) -> tuple[str, str]:
        """Enqueue one checked image with whatever else is waiting: (its job id, the results key
        of its task). Raises what enqueueing raised, or TimeoutError when storage or the broker
        did not answer within DAAS_RESULT_TIMEOUT (the request's thread is not held for ever)."""
        self._start()
        ticket = Ticket(client, accepted)
        self.waiting.put(ticket)
        if not ticket.done.wait(self.settings.result_timeout):
            raise TimeoutError(f"storing and enqueueing the image took over {self.settings.result_timeout:.0f} s")
        if ticket.error:
            raise ticket.error
        return ticket.job_id, ticket.key

    def _start(self) -> None:
        with self.lock:  # one committer per process (after a fork too)
            if self.pid != os.getpid():
                self.pid = os.getpid()
                threading.Thread(target=self._commit_forever, name="daas-coalesce", daemon=True).start()

    def _commit_forever(self) -> None:
        held: list[Ticket] = []  # taken from the queue, not yet committed (other clients' images)
        while True:
            if not held:
                held.append(self.waiting.get())
            while len(held) < self.settings.max_files:
                try:
                    held.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            group = [ticket for ticket in held if ticket.client == held[0].client][:self.settings.max_files]
            committed = {id(ticket) for ticket in group}
            held = [ticket for ticket in held if id(ticket) not in committed]
            self._commit(group)

    def _commit(self, group: list[Ticket]) -> None:
        from daas.jobs import enqueue

        try:
            job, keys = enqueue(self.settings, [ticket.accepted for ticket in group])
        except Exception as exc:  # each request answers with it
            for ticket in group:
                ticket.error = exc
                ticket.done.set()
            return
        for ticket in group:
            ticket.job_id, ticket.key = job["job_id"], keys[ticket.accepted[0]["id"]]
            ticket.done.set()


@functools.cache
def for_settings(settings: Settings) -> Coalescer:
    return Coalescer(settings)
