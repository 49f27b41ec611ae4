"""Batch jobs: every image under an S3 prefix, classified without passing through the web tier.

`POST /api/batches` (or `python -m daas batch`) stores the batch's definition; the controller's
batch tick (`daas.batch_tick`, every DAAS_BATCH_INTERVAL) lists the source with ListObjectsV2, a
page at a time, and enqueues the matching keys as chunks (`daas.classify_objects`, ten chunks per
SendMessageBatch) as it lists: nothing holds the whole listing. Workers read each image straight
from the source bucket and write the chunk's results as one JSON Lines part under the output prefix,
then a marker whose name carries its counts; progress is the count of markers.

In the output bucket, under `batches/<batch_id>/`:
  state.json           the definition, and the listing's checkpoint (the lister's only)
  cancelled            present once cancelled (written by the web tier: never two writers of a key)
  done/<name>.<n>.<errors>   one empty marker per finished chunk (the workers')
and `batches/active/<batch_id>`, the controller's list of batches to follow. Results:
`<output prefix><batch_id>/part-<name>.jsonl` and, at the end, `.../manifest.json`. A chunk's name
is its number and a digest of its keys (chunk_name).

Resuming: the checkpoint is the key before the first key not yet enqueued (ListObjectsV2's
StartAfter), written after each SendMessageBatch, so a lister killed at any point starts again at
the next key. Only the ten chunks of a send that succeeded just before the kill can go out again
(no store spans S3 and SQS in one transaction); chunks are the matching keys taken
DAAS_IMAGES_PER_TASK at a time in listing order, whatever the pages, so a resent chunk has the same
name, and a worker skips a chunk whose marker exists: no image is classified or written twice.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import re
import time
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from daas import aws, broker, jobs, storage
from daas.aws import client
from daas.config import BATCH_LIST_BUDGET, Settings
from daas.jobs import Rejected

log = logging.getLogger(__name__)

TASK = "daas.classify_objects"
ACTIVE = "batches/active/"
PAGE_KEYS = 1000  # ListObjectsV2's most keys per call
# Where a batch's results may go in the output bucket: the only prefix (with the markers) that the
# workers' role may write for batches (daas/cloudformation.yaml), so no batch overwrites the service's own.
OUTPUT_ROOT = "batch-results/"


def state_key(batch_id: str) -> str:
    return f"batches/{batch_id}/state.json"


def cancel_key(batch_id: str) -> str:
    return f"batches/{batch_id}/cancelled"


def marks_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}/done/"


def chunk_name(chunk: int, keys: list[str]) -> str:
    """A chunk's number and a digest of its keys: a chunk sent again after a resume has the same
    name; one whose keys differ (objects added under the prefix meanwhile) never passes for it."""
    return f"{chunk:09d}-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:12]}"


def mark_key(batch_id: str, name: str, images: int, errors: int) -> str:
    return f"{marks_prefix(batch_id)}{name}.{images}.{errors}"


def part_key(batch: dict, name: str) -> str:
    return f"{batch['output']['prefix']}{batch['batch_id']}/part-{name}.jsonl"


def manifest_key(batch: dict) -> str:
    return f"{batch['output']['prefix']}{batch['batch_id']}/manifest.json"


def s3_url(url: object, what: str) -> tuple[str, str]:
    """(bucket, prefix) of an `s3://bucket/prefix/` URL; Rejected with what is wrong."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "s3" or not parts.netloc:
        raise Rejected(f"{what} must be an S3 URL like s3://bucket/prefix/, got {str(url)[:200]!r}")
    return parts.netloc, parts.path.lstrip("/")


def new(settings: Settings, request: object, owner: str = "") -> dict:
    """A batch's definition from a request's JSON; Rejected (400, 403) saying what to change."""
    if not isinstance(request, dict):
        raise Rejected('send a JSON object like {"source": "s3://bucket/prefix/", "include": "*.jpg"}')
    unknown = set(request) - {"source", "include", "exclude", "output", "dry_run", "callback_url"}
    if unknown:
        raise Rejected(f"unknown fields {sorted(unknown)}: a batch takes source, include, exclude, output, "
                       "dry_run and callback_url")
    source_bucket, source_prefix = s3_url(request.get("source"), "source")
    if source_bucket not in settings.batch_source_buckets:
        raise Rejected(f"the service may not read s3://{source_bucket}/: batches read from "
                       f"{', '.join(sorted(settings.batch_source_buckets))} (DAAS_BATCH_SOURCES names the "
                       "others, and the deploy grants the workers read access to them)", 403)
    output_bucket, output_prefix = s3_url(request.get("output") or f"s3://{settings.output_bucket}/{OUTPUT_ROOT}",
                                          "output")
    if output_bucket != settings.output_bucket:
        raise Rejected(f"results go to the service's output bucket: use s3://{settings.output_bucket}/<prefix>/")
    output_prefix = output_prefix if output_prefix.endswith("/") else output_prefix + "/"
    if not output_prefix.startswith(OUTPUT_ROOT):
        raise Rejected(f"results go under s3://{settings.output_bucket}/{OUTPUT_ROOT} (the workers may write "
                       f"nowhere else): use s3://{settings.output_bucket}/{OUTPUT_ROOT}<your prefix>/")
    patterns = {name: request.get(name, default) for name, default in (("include", "*"), ("exclude", ""))}
    for name, pattern in patterns.items():
        if not isinstance(pattern, str) or len(pattern) > 200:
            raise Rejected(f"{name} must be a glob like '*.jpg' (at most 200 characters)")
    if not isinstance(request.get("dry_run", False), bool):
        raise Rejected("dry_run must be true or false")
    return {"batch_id": jobs.new_id(), "created": time.time(), "owner": owner,
            "source": {"bucket": source_bucket, "prefix": source_prefix}, **patterns,
            "output": {"bucket": output_bucket, "prefix": output_prefix},
            "listing": {"after": "", "listed": 0, "enqueued": 0, "bytes": 0, "chunks": 0, "complete": False},
            "finished": None}


def matches(batch: dict, key: str) -> bool:
    """Whether a listed key is one of the batch's images: the globs match the key below the source
    prefix (`*` spans folders, as in fnmatch); folder placeholders (keys ending in /) never do, nor
    the web tier's packs of uploads (storage.pack_key), which share the input bucket with what
    people put there for batches (a batch over the whole bucket had labelled each pack by its
    first image)."""
    relative = key[len(batch["source"]["prefix"]):]
    return not key.endswith(("/", storage.PACK_SUFFIX)) and fnmatch.fnmatchcase(relative, batch["include"]) and \
        not (batch["exclude"] and fnmatch.fnmatchcase(relative, batch["exclude"]))


def pages(settings: Settings, batch: dict, after: str):
    """The source's listing after key `after`, a page (at most PAGE_KEYS objects) at a time: (the
    page's objects, whether more follow)."""
    s3 = client("s3", settings)
    while True:
        page = s3.list_objects_v2(Bucket=batch["source"]["bucket"], Prefix=batch["source"]["prefix"],
                                  MaxKeys=PAGE_KEYS, **({"StartAfter": after} if after else {}))
        objects = page.get("Contents", [])
        yield objects, page.get("IsTruncated", False)
        if not objects or not page.get("IsTruncated"):
            return
        after = objects[-1]["Key"]


def dry_run(settings: Settings, batch: dict) -> dict:
    """What the batch would classify: `count` images of `bytes` in all; nothing is enqueued."""
    count = size = 0
    for objects, _ in pages(settings, batch, ""):
        matched = [obj for obj in objects if matches(batch, obj["Key"])]
        count, size = count + len(matched), size + sum(obj["Size"] for obj in matched)
    return {"dry_run": True, "count": count, "bytes": size}


def create(settings: Settings, batch: dict) -> None:
    """Store a new batch and put it on the controller's list; its first tick is asked for now."""
    put_state(settings, batch)
    client("s3", settings).put_object(Bucket=settings.output_bucket, Key=f"{ACTIVE}{batch['batch_id']}", Body=b"")
    nudge(settings)


def nudge(settings: Settings) -> None:
    """Ask the controller for a batch tick now rather than at the next beat (best effort)."""
    from daas.control import batch_tick

    try:
        batch_tick.apply_async(queue=settings.control_queue, expires=max(settings.batch_interval, 10.0))
    except Exception as exc:
        log.warning("could not nudge the controller (its next tick lists the batch): %r", exc)


def put_state(settings: Settings, batch: dict) -> None:
    storage.put_json(settings, state_key(batch["batch_id"]), batch)


def get_state(settings: Settings, batch_id: str) -> dict | None:
    return storage.get_json(settings, state_key(batch_id)) if storage.is_id(batch_id) else None


@functools.lru_cache(maxsize=64)
def definition(settings: Settings, batch_id: str) -> dict | None:
    """A worker's view of a batch: its source and output never change, so each process reads
    them once."""
    return get_state(settings, batch_id)


def exists(settings: Settings, key: str) -> bool:
    s3 = client("s3", settings)
    try:
        s3.head_object(Bucket=settings.output_bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise


def cancelled(settings: Settings, batch_id: str) -> bool:
    return exists(settings, cancel_key(batch_id))


def advance(settings: Settings, batch: dict, budget: float = BATCH_LIST_BUDGET) -> dict:
    """List and enqueue more of a batch, for up to `budget` seconds; stops at a cancel. A page is
    enqueued only while fewer than DAAS_BATCH_QUEUE_AHEAD messages wait in the classify queue: a
    batch of millions never stands in one block before the jobs uploaded after it, and a cancel
    leaves little to skip. (Measured on the local endpoint, where every SQS call scans the queue:
    20,000 images enqueued at once ran at 59 images/s against 88 through /api/jobs.)

    Chunks are the matching keys taken DAAS_IMAGES_PER_TASK at a time in listing order, whatever
    the pages: a resumed listing (from the checkpoint, the key before the first key not yet sent)
    forms the same chunks with the same numbers, which the workers recognise (see `settled`)."""
    deadline, listing = time.monotonic() + budget, batch["listing"]
    if listing["complete"]:
        return batch
    listed = Listed(listing["after"])
    for objects, more in pages(settings, batch, listing["after"]):
        if cancelled(settings, batch["batch_id"]) or not room_in_queue(settings, deadline):
            break
        listed.add(batch, objects)
        send_chunks(settings, batch, listed, final=not more)
        if not more:
            listing["complete"] = True
            put_state(settings, batch)
            break
        if time.monotonic() > deadline:
            break
    return batch


class Listed:
    """The keys listed since the checkpoint and not yet sent: (position, previous key, object)."""

    def __init__(self, after: str):
        self.pending: list[tuple[int, str, dict]] = []
        self.position, self.last_key, self.counted = 0, after, 0

    def add(self, batch: dict, objects: list[dict]) -> None:
        for obj in objects:
            self.position += 1
            if matches(batch, obj["Key"]):
                self.pending.append((self.position, self.last_key, obj))
            self.last_key = obj["Key"]


def send_chunks(settings: Settings, batch: dict, listed: Listed, final: bool) -> None:
    """Send the full chunks pending (and, at the listing's end, the last short one), ten to a
    SendMessageBatch, checkpointing after each send; then checkpoint what was listed past them."""
    from daas import metrics  # the controller's counters

    listing, size = batch["listing"], max(settings.images_per_task, 1)
    while len(listed.pending) >= size or (final and listed.pending):
        count = min(broker.SEND_BATCH * size, len(listed.pending) if final else len(listed.pending) // size * size)
        group, listed.pending = listed.pending[:count], listed.pending[count:]
        chunks = [[obj["Key"] for _, _, obj in group[i:i + size]] for i in range(0, len(group), size)]
        broker.send_tasks(settings, TASK, [[batch["batch_id"], listing["chunks"] + n, keys]
                                           for n, keys in enumerate(chunks)], settings.queue)
        listing.update(chunks=listing["chunks"] + len(chunks), enqueued=listing["enqueued"] + len(group),
                       bytes=listing["bytes"] + sum(obj["Size"] for _, _, obj in group))
        metrics.batch_images_enqueued.inc(len(group))
        checkpoint(settings, batch, listed, group[-1][0], group[-1][2]["Key"])
    # Past the keys sent: up to the key before the first one pending (it starts the next chunk).
    position, key = (listed.pending[0][0] - 1, listed.pending[0][1]) if listed.pending else (
        listed.position, listed.last_key)
    checkpoint(settings, batch, listed, position, key)


def checkpoint(settings: Settings, batch: dict, listed: Listed, position: int, key: str) -> None:
    """Record that the listing is done up to `key` (the `position`th object listed this turn)."""
    from daas import metrics

    if position <= listed.counted:
        return
    batch["listing"].update(after=key, listed=batch["listing"]["listed"] + position - listed.counted)
    metrics.batch_objects_listed.inc(position - listed.counted)
    listed.counted = position
    put_state(settings, batch)


def room_in_queue(settings: Settings, deadline: float) -> bool:
    """Whether the classify queue has room for another page, waiting for it until `deadline`."""
    while aws.queue_depth(settings)["visible"] >= settings.batch_queue_ahead:
        if time.monotonic() + 1 > deadline:
            return False
        time.sleep(1)
    return True


def counts(settings: Settings, batch_id: str) -> tuple[int, int, float | None]:
    """(images labelled, images with an error, when the last chunk finished) from the markers."""
    labelled = errors = 0
    latest = None
    paginator = client("s3", settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.output_bucket, Prefix=marks_prefix(batch_id)):
        for obj in page.get("Contents", []):
            _, images, failed = obj["Key"].rsplit("/", 1)[1].split(".")
            labelled, errors = labelled + int(images) - int(failed), errors + int(failed)
            latest = max(latest or 0, obj["LastModified"].timestamp())
    return labelled, errors, latest


def progress(settings: Settings, batch: dict) -> dict:
    """A batch's progress as the API shows it."""
    listing, batch_id = batch["listing"], batch["batch_id"]
    labelled, errors, last = counts(settings, batch_id)
    finished = labelled + errors
    if batch["finished"]:
        status = batch["finished"]["status"]
    elif cancelled(settings, batch_id):
        status = "cancelled"
    elif not listing["complete"]:
        status = "listing"
    else:  # "done" once the controller has written the manifest (batch["finished"], above)
        status = "running"
    ended = batch["finished"]["at"] if batch["finished"] else time.time()
    if listing["complete"] and finished >= listing["enqueued"] and last:
        ended = min(ended, last)  # the rate up to the last chunk, not to the manifest
    elapsed = max(ended - batch["created"], 1e-3)
    rate = finished / elapsed
    left = listing["enqueued"] - finished
    return {"batch_id": batch_id, "status": status,
            "source": f"s3://{batch['source']['bucket']}/{batch['source']['prefix']}",
            "include": batch["include"], "exclude": batch["exclude"],
            "output": f"s3://{batch['output']['bucket']}/{batch['output']['prefix']}{batch_id}/",
            "listed": listing["listed"], "enqueued": listing["enqueued"], "bytes": listing["bytes"],
            "done": labelled, "errors": errors, "images_per_second": round(rate, 2),
            "eta_seconds": round(left / rate, 1) if status in ("running", "listing") and rate > 0 and left > 0 else None,
            "created": batch["created"], "finished_at": batch["finished"]["at"] if batch["finished"] else None}


def find(settings: Settings, batch_id: str, owner: str = "") -> dict | None:
    """The batch, for the API key that created it; None for every other caller and unknown ids."""
    import hmac

    batch = get_state(settings, batch_id)
    if batch is None or not hmac.compare_digest(batch.get("owner", ""), owner):
        return None
    return batch


def cancel(settings: Settings, batch: dict) -> None:
    """Cancel a batch: chunks not yet started are skipped by the workers, the lister stops."""
    if not batch["finished"]:
        client("s3", settings).put_object(Bucket=settings.output_bucket, Key=cancel_key(batch["batch_id"]), Body=b"")
        nudge(settings)


def finish(settings: Settings, batch: dict, status: str) -> None:
    """Write the manifest beside the parts, record the end and take the batch off the active list."""
    batch["finished"] = {"status": status, "at": time.time()}
    summary = progress(settings, batch)
    s3 = client("s3", settings)
    s3.put_object(Bucket=settings.output_bucket, Key=manifest_key(batch), ContentType="application/json",
                  Body=json.dumps({**summary, "parts": f"{summary['output']}part-*.jsonl",
                                   "line": ["key", "label", "score", "top5", "error"]}, indent=1).encode())
    put_state(settings, batch)
    s3.delete_object(Bucket=settings.output_bucket, Key=f"{ACTIVE}{batch['batch_id']}")
    from daas import metrics

    metrics.batch_images_finished.labels(outcome="done").inc(summary["done"])
    metrics.batch_images_finished.labels(outcome="error").inc(summary["errors"])
    log.info("batch %s %s: %d labelled, %d errors, %d listed", batch["batch_id"], status,
             summary["done"], summary["errors"], summary["listed"])


def active(settings: Settings) -> list[str]:
    paginator = client("s3", settings).get_paginator("list_objects_v2")
    return [obj["Key"][len(ACTIVE):] for page in paginator.paginate(Bucket=settings.output_bucket, Prefix=ACTIVE)
            for obj in page.get("Contents", [])]


def tick(settings: Settings) -> dict[str, str]:
    """The controller's turn over the active batches: list more of each (BATCH_LIST_BUDGET seconds), and
    finish those whose chunks all finished (or that were cancelled). Returns {batch id: its status}
    (`listing` while its listing goes on)."""
    seen = {}
    for batch_id in active(settings):
        batch = get_state(settings, batch_id)
        if batch is None or batch["finished"]:
            client("s3", settings).delete_object(Bucket=settings.output_bucket, Key=f"{ACTIVE}{batch_id}")
            continue
        try:
            if cancelled(settings, batch_id):
                finish(settings, batch, "cancelled")
            else:
                advance(settings, batch)
                labelled, errors, _ = counts(settings, batch_id)
                if batch["listing"]["complete"] and labelled + errors >= batch["listing"]["enqueued"]:
                    finish(settings, batch, "done")
        except Exception as exc:  # one batch's trouble (its source unreadable, say) never stops the others
            log.warning("batch %s: this tick failed (tried again at the next one): %r", batch_id, exc)
        seen[batch_id] = batch["finished"]["status"] if batch["finished"] else (
            "running" if batch["listing"]["complete"] else "listing")
    return seen


# -- the workers' side -------------------------------------------------------------------------

KEY = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")


def invalid_chunk(batch_id: object, chunk: object, keys: object, most: int) -> str | None:
    """Why a daas.classify_objects task's arguments must not be run (None: they may)."""
    if not storage.is_id(batch_id):
        return f"the batch id {str(batch_id)[:80]!r} is not a generated id"
    if not isinstance(chunk, int) or chunk < 0:
        return "the chunk number must be a non-negative integer"
    if not isinstance(keys, list) or not 0 < len(keys) <= most or \
            not all(isinstance(key, str) and KEY.fullmatch(key) for key in keys):
        return f"the keys must be a list of 1 to {most} S3 keys"
    return None


def settled(settings: Settings, batch_id: str, name: str) -> bool:
    """Whether a chunk (see chunk_name) needs no work: its results exist (a message sent twice, or
    delivered again after its worker stopped), or its batch was cancelled."""
    page = client("s3", settings).list_objects_v2(Bucket=settings.output_bucket, MaxKeys=1,
                                                  Prefix=f"{marks_prefix(batch_id)}{name}.")
    return bool(page.get("Contents")) or cancelled(settings, batch_id)


def line(document: dict) -> dict:
    """A result document as a line of the batch's output."""
    return {"key": document["name"], "label": document["label"], "score": document["score"],
            "top5": document["top5"], "error": document["error"]}


def store_part(settings: Settings, batch: dict, name: str, lines: list[dict]) -> None:
    """Write a chunk's lines as one part, then its marker (a marker always has its part)."""
    s3 = client("s3", settings)
    body = "".join(json.dumps(entry) + "\n" for entry in lines).encode()
    s3.put_object(Bucket=batch["output"]["bucket"], Key=part_key(batch, name), Body=body,
                  ContentType="application/x-ndjson")
    errors = sum(entry["error"] is not None for entry in lines)
    s3.put_object(Bucket=settings.output_bucket, Key=mark_key(batch["batch_id"], name, len(lines), errors), Body=b"")
