"""Per-process queues and their proofs of life (leases), which housekeeping reads.

Some queues belong to one process and die with it: a worker's remote-control queue (pidbox),
Flower's event queue, an `inspect` call's reply queue, a web process's reply queue. A clean exit
deletes them; a killed process cannot, so the controller's housekeeping sweeps what is left. To
tell a dead owner from a live one, every such queue carries two tags: `daas:stack`, the stack it
belongs to (given at creation), and `daas:alive`, the epoch second of its owner's latest renewal.
The owner renews it every DAAS_QUEUE_LEASE_INTERVAL seconds from a thread of its own
(daas.transport for kombu's queues, daas.replies for reply queues); a queue not renewed for
MISSED_RENEWALS intervals is an orphan (Settings.queue_lease_expiry).

Why tags, and not what the sweeper used before (issue 16):
- a queue's contents say nothing about its owner: a live Flower far behind (a burst on two busy
  cores, or a stopped process) holds many events, and the old rule deleted its queue;
- names alone are ambiguous: a stack `prod-daas` ends with `-daas`, so `daas`'s sweeper took its
  live pidbox queues for its own;
- LastModifiedTimestamp moves locally when an attribute is set to the value it already has, but AWS
  does not document that it does; a tag with a new value is a definite write.
"""
from __future__ import annotations

import re
import time

STACK_TAG = "daas:stack"
ALIVE_TAG = "daas:alive"


def tags(stack: str, now: float | None = None) -> dict[str, str]:
    """The tags of a live per-process queue of `stack`."""
    return {STACK_TAG: stack, ALIVE_TAG: f"{time.time() if now is None else now:.0f}"}


def renew(sqs, url: str, stack: str) -> None:
    """Prove that the owner of the queue at `url` is alive (one TagQueue)."""
    sqs.tag_queue(QueueUrl=url, Tags=tags(stack))


def per_process_names(stack: str) -> list[re.Pattern]:
    """The shapes of the per-process queue names a stack's processes make. The pidbox shape also
    matches another stack's queues whose name ends in `-<stack>`: the tag tells them apart."""
    s = re.escape(stack)
    return [re.compile(rf"^{s}-celeryev-[0-9a-f-]{{36}}$"),      # an events receiver (Flower)
            re.compile(rf"^{s}-replies-[0-9a-f]{{32}}$"),        # a web process (daas.replies)
            re.compile(rf"^[0-9a-f-]{{36}}-reply-{s}-pidbox$"),  # an `inspect` call's replies
            re.compile(rf"^.+-{s}-pidbox$")]                     # a worker's or the controller's node


def maybe_per_process(stack: str, name: str) -> bool:
    return any(pattern.match(name) for pattern in per_process_names(stack))


def orphaned(stack: str, name: str, tags_: dict[str, str], created: float | None, now: float,
             expires_after: float) -> bool:
    """Whether the per-process-looking queue `name`, with its tags and creation time (epoch
    seconds; only needed for an untagged queue), is an orphan of `stack` to delete.

    A queue tagged for another stack is never ours. An untagged one (left by a release before
    leases, or by a process killed between creating and tagging it) is judged by its age, and
    only when its name cannot be another stack's."""
    if STACK_TAG in tags_:
        if tags_[STACK_TAG] != stack:
            return False
        alive = float(tags_.get(ALIVE_TAG) or (created if created is not None else now))
        return now - alive > expires_after
    unambiguous = name.startswith(f"{stack}-") or bool(per_process_names(stack)[2].match(name))
    return unambiguous and created is not None and now - created > expires_after
