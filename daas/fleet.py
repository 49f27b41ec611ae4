"""The controller's view of its workers: heartbeat records, and which workers must end.

Each worker process writes a heartbeat record, `workers/<principal>/<node>` in the output bucket, when
it starts consuming and every DAAS_HEARTBEAT_INTERVAL seconds while it makes progress
(daas.lifecycle), and deletes it when it exits cleanly. A node name is `<stack>-worker-<pid>@<host>`;
on EC2 the host part is the instance id, so a record names its instance. The principal is the
worker's own (IAM's `aws:userid`: `<role id>:<instance id>` on EC2), so that the worker role may
write and delete only the records of its own instance (daas/cloudformation.yaml): a worker can
never age or delete another's record and get it terminated. The controller lists the records once per
housekeeping run (one LIST per 1000 workers) and reads ages from their LastModified time:

- a worker whose provider says it is gone (its pid, its instance) is dead at once;
- a worker that missed MISSED_HEARTBEATS heartbeats is dead (stalled, hung, cut off);
- a worker that never sent one within DAAS_EC2_JOIN_TIMEOUT of its launch never joined;
- a worker older than DAAS_MAX_LIFETIME plus that grace outlived its lifetime (it retires itself
  at DAAS_MAX_LIFETIME; this is the backstop).

The controller asks a worker it no longer needs to retire with a marker beside the records,
`retire/<principal>/<node>` (daas.autoscale.retire_surplus), which each process reads with every
heartbeat (daas.lifecycle); the worker role may only read its own instance's markers.

No ping: a solo worker busy on a long task cannot answer one (the old sweeper deleted such a
worker's pidbox queue, and the worker died of it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from daas import storage
from daas.aws import caller_id, client
from daas.config import Settings

PREFIX = "workers/"
RETIRE_PREFIX = "retire/"  # not under PREFIX: the records' listing must not see the markers
_NODE = re.compile(r"^(?P<stack>.+)-worker-(?P<pid>\d+)@(?P<host>.+)$")


@dataclass(frozen=True)
class Worker:
    """A worker as its provider sees it: a local process (id: its pid) or an instance (its id)."""

    id: str
    launched: float  # epoch seconds


def node_name(settings: Settings, pid: int, host: str) -> str:
    return f"{settings.stack}-worker-{pid}@{host}"


def parse_node(name: str) -> tuple[int, str] | None:
    """(pid, host) of a worker's node name (or of a record name ending in one); None for any other."""
    match = _NODE.match(name.rsplit("/", 1)[-1])
    return (int(match["pid"]), match["host"]) if match else None


def record_name(settings: Settings, node: str) -> str:
    """This process's record of `node`, as `heartbeats` names it: `<principal>/<node>`."""
    return f"{caller_id(settings)}/{node}"


def beat(settings: Settings, node: str, record: dict, s3=None) -> None:
    """Write a worker's heartbeat record (with `s3`, a client of the caller's choosing: a worker's
    gives up within a round, see daas.aws.duty_client)."""
    storage.put_json(settings, PREFIX + record_name(settings, node), record, s3)


def read(settings: Settings, name: str) -> dict | None:
    """A record, named as `heartbeats` names it; None if it is gone (its worker exited meanwhile)."""
    return storage.get_json(settings, PREFIX + name)


def forget(settings: Settings, name: str) -> None:
    """Delete a record, named as `heartbeats` names it (or as `record_name` does)."""
    client("s3", settings).delete_object(Bucket=settings.output_bucket, Key=PREFIX + name)


def ask_to_retire(settings: Settings, name: str, reason: str) -> None:
    """Ask the worker process of a record (named as `heartbeats` names it) to retire."""
    storage.put_json(settings, RETIRE_PREFIX + name, {"reason": reason})


def retire_request(settings: Settings, name: str, s3) -> str | None:
    """Why the controller asked this record's process to retire, or None (`s3`: the caller's client)."""
    request = storage.get_json(settings, RETIRE_PREFIX + name, s3)
    return request["reason"] if request else None


def retire_requests(settings: Settings) -> set[str]:
    """The record names with a retire request standing (one LIST; usually empty)."""
    return set(_listed(settings, RETIRE_PREFIX))


def forget_retire_request(settings: Settings, name: str) -> None:
    client("s3", settings).delete_object(Bucket=settings.output_bucket, Key=RETIRE_PREFIX + name)


def heartbeats(settings: Settings) -> dict[str, float]:
    """{record name (`<principal>/<node>`): epoch seconds of its latest heartbeat} for every worker
    record of the stack."""
    return {name: modified.timestamp() for name, modified in _listed(settings, PREFIX).items()}


def _listed(settings: Settings, prefix: str) -> dict:
    """{key without `prefix`: its LastModified} of every object under `prefix` in the output bucket."""
    pages = client("s3", settings).get_paginator("list_objects_v2").paginate(
        Bucket=settings.output_bucket, Prefix=prefix)
    return {obj["Key"][len(prefix):]: obj["LastModified"] for page in pages for obj in page.get("Contents", [])}


def verdicts(workers: list[Worker], beats: dict[str, float], now: float, *, join_timeout: float,
             stale_after: float, max_lifetime: float) -> dict[str, str]:
    """{worker id: why it must end} for the provider's workers that are broken or too old.

    `beats` maps worker ids to their latest heartbeat (see `Provider.worker_id`)."""
    ended = {}
    for worker in workers:
        age, last = now - worker.launched, beats.get(worker.id)
        if last is None and age > join_timeout:
            ended[worker.id] = f"sent no heartbeat within {join_timeout:.0f} s of its launch (never joined)"
        elif last is not None and now - last > stale_after:
            ended[worker.id] = f"sent no heartbeat for {now - last:.0f} s (the limit is {stale_after:.0f} s)"
        elif max_lifetime and age > max_lifetime + join_timeout:
            ended[worker.id] = f"has run for {age / 3600:.1f} h, past DAAS_MAX_LIFETIME"
    return ended


def owners(beats: dict[str, float], worker_id) -> dict[str, str | None]:
    """{node: the id of the worker it runs on}, from `Provider.worker_id(pid, host)`; None for a
    node whose worker the provider cannot name (another host's, or not a worker's name)."""
    return {node: worker_id(*parsed) if (parsed := parse_node(node)) else None for node in beats}


def latest_by_worker(beats: dict[str, float], owner: dict[str, str | None]) -> dict[str, float]:
    """Heartbeats keyed by worker id instead of node (a worker may run several processes)."""
    latest: dict[str, float] = {}
    for node, at in beats.items():
        if owner[node] is not None:
            latest[owner[node]] = max(at, latest.get(owner[node], 0.0))
    return latest
