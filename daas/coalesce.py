"""Concurrent `POST /classify` requests share jobs and tasks: a group commit.

The original client sends 100 one-image requests at once. Sent alone, each image would be a job
of its own (a manifest PUT) and a task of its own (a send, a receive, a delete, task events, a
result PUT and a reply), six times the requests per image of a 10-image upload, for the same
work. Here a request that has passed the edge checks hands its image over and waits; its client's
committer takes every image of that client waiting (up to DAAS_MAX_FILES: images of different API
keys never share a job) and enqueues them as one job, in tasks of up to DAAS_IMAGES_PER_TASK
images. While it works, the client's next requests gather. Alone, a request is enqueued at once,
as before: no timer, no added latency; under a burst the groups grow by themselves.

Each client with images waiting has one committer thread, never two: clients commit side by side
(issue 16: one committer per process had a big group of one client delay every other client),
while a burst of one client still gathers into groups. There are at most as many committers as
requests waiting, so at most DAAS_WEB_THREADS per process.

A request that stops waiting (after DAAS_RESULT_TIMEOUT) is abandoned, and its image never
committed: Flask closes its upload when the request ends (issue 16: committing it failed the whole
group). An upload that can no longer be read fails its own request, before anything is stored
(daas.jobs.enqueue). The images of a task are stored as one object, so a PUT that fails fails the
requests whose images share it: one S3 refused, or one whose request was abandoned while it was
being sent (its upload closed under it, after DAAS_RESULT_TIMEOUT of a PUT): they answer 503,
"upload it again", and nothing of theirs is sent.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field

from daas import jobs, replies, storage
from daas.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """One request's image, waiting for its client's committer. `abandoned` and `sealed` change
    under the coalescer's lock, so that exactly one of them is ever set."""

    client: str
    accepted: tuple  # (image, data), checked at the edge
    owner: str = ""  # recorded in the job's manifest (daas.jobs.enqueue); one per client
    done: threading.Event = field(default_factory=threading.Event)
    job_id: str = ""
    key: str = ""
    error: Exception | None = None
    abandoned: bool = False  # its request stopped waiting: never commit it
    sealed: bool = False     # stored and being sent: its request waits for the send's outcome

    @property
    def image_id(self) -> str:
        return self.accepted[0]["id"]


class Coalescer:
    def __init__(self, settings: Settings):
        self.settings, self.lock, self.pid = settings, threading.Lock(), None
        self.waiting: dict[str, list[Ticket]] = {}  # per client, not yet taken by its committer
        self.committing: set[str] = set()  # the clients whose committer thread runs

    def enqueue(self, client: str, accepted: tuple, owner: str = "") -> tuple[str, str]:
        """Enqueue one checked image with whatever else its client has waiting: (its job id, the
        results key of its task). Raises what enqueueing raised (daas.jobs.Rejected for an image
        that could not be queued), or TimeoutError when storage or the broker did not answer
        within DAAS_RESULT_TIMEOUT (the request's thread is not held for ever)."""
        ticket = Ticket(client, accepted, owner)
        self._hand_over(ticket)
        if not ticket.done.wait(self.settings.result_timeout):
            self._abandon(ticket)
            # Sealed: the image is stored and its task being sent. Answering now would have the
            # client send it again while it runs; the send ends within the broker client's retries.
            ticket.done.wait()
        if ticket.error:
            raise ticket.error
        return ticket.job_id, ticket.key

    def _hand_over(self, ticket: Ticket) -> None:
        with self.lock:
            if self.pid != os.getpid():  # a forked process has none of its parent's committers
                self.pid, self.waiting, self.committing = os.getpid(), {}, set()
            if ticket.client not in self.committing:
                # Started first: a thread that cannot start leaves no ticket behind. It takes the
                # lock, so it sees this ticket.
                threading.Thread(target=self._commit_all, args=(ticket.client,), name="daas-coalesce",
                                 daemon=True).start()
                self.committing.add(ticket.client)
            self.waiting.setdefault(ticket.client, []).append(ticket)

    def _abandon(self, ticket: Ticket) -> None:
        """Give up on a ticket that is not sealed yet (TimeoutError): its committer skips it."""
        with self.lock:
            if ticket.sealed:
                return
            ticket.abandoned = True
        raise TimeoutError(f"storing and enqueueing the image took over {self.settings.result_timeout:.0f} s")

    def _commit_all(self, client: str) -> None:
        """A client's committer: its waiting images, group after group, until none is left."""
        while group := self._take(client):
            self._commit(group)

    def _take(self, client: str) -> list[Ticket]:
        """The client's next group: up to DAAS_MAX_FILES waiting tickets, none abandoned. None
        left: the client has no committer from now on."""
        with self.lock:
            waiting = [ticket for ticket in self.waiting.pop(client, []) if not ticket.abandoned]
            group, rest = waiting[:self.settings.max_files], waiting[self.settings.max_files:]
            if rest:
                self.waiting[client] = rest
            if not group:
                self.committing.discard(client)
            return group

    def _seal(self, tickets: list[Ticket]) -> list[dict]:
        """Of the tickets whose image is stored, the images to send: those whose request still
        waits (it now waits for the send). The others are never sent."""
        with self.lock:
            kept = [ticket for ticket in tickets if not ticket.abandoned]
            for ticket in kept:
                ticket.sealed = True
        return [ticket.accepted[0] for ticket in kept]

    def _commit(self, group: list[Ticket]) -> None:
        by_id = {ticket.image_id: ticket for ticket in group}
        try:
            job, keys, errors = jobs.enqueue(
                self.settings, [ticket.accepted for ticket in group], owner=group[0].owner,
                keep=lambda stored: self._seal([by_id[image["id"]] for image in stored]))
            for image_id, ticket in by_id.items():
                if image_id in keys:
                    ticket.job_id, ticket.key = job["job_id"], keys[image_id]
                else:
                    ticket.error = jobs.Rejected(errors[image_id], 503)
        except jobs.Rejected as exc:  # the job could not be stored: nothing was sent
            for ticket in group:
                ticket.error = exc
        except Exception as exc:  # unforeseen: each request not answered yet answers with it
            log.exception("committing %d images failed", len(group))
            for ticket in group:
                if not (ticket.key or ticket.error):
                    ticket.error = jobs.Rejected(jobs.not_queued(repr(exc)), 503)
        finally:  # a sealed request waits without a deadline: it must always be woken
            for ticket in group:
                ticket.done.set()


@functools.cache
def for_settings(settings: Settings) -> Coalescer:
    return Coalescer(settings)


def classify_one(settings: Settings, upload: jobs.Upload, client: str = "",
                 owner: str = "") -> tuple[str, dict, dict | None]:
    """Classify one image and wait for its result: (its job id, the image, its result or None on
    timeout), the synchronous contract. Concurrent requests of one client share jobs and tasks
    (the Coalescer above); the result is pushed to this process (daas.replies), the output bucket is
    only the fallback. Rejected (503) when the image could not be queued."""
    accepted, _ = jobs.check(settings, [upload])
    try:
        job_id, key = for_settings(settings).enqueue(client, accepted[0], owner)
    except TimeoutError as exc:
        raise jobs.Rejected(f"the service could not store the image in time ({exc}): retry later", 503) from exc
    image = accepted[0][0]
    found = replies.for_settings(settings).wait(key, lambda: storage.get_results(settings, key),
                                                settings.result_timeout)
    result = next((r for r in found or [] if r["id"] == image["id"]), None)
    return job_id, image, result
