"""Jobs: a set of uploaded images classified together. Shared by the web form, the API and /classify."""
from __future__ import annotations

import hmac
import itertools
import logging
import math
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Callable

from daas import callbacks, replies, results, storage
from daas.config import Settings
from daas.images import BadImage, check_upload

log = logging.getLogger(__name__)


@dataclass
class Upload:
    """One uploaded file: its name as sent, and its bytes (in memory, or a spooled file the web
    tier's form parser wrote: a request is never held in memory whole)."""

    name: str
    data: bytes | IO[bytes]


class Rejected(Exception):
    """No image of the request can be classified; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# Shared by all requests of a web process: S3 writes of a request go out in parallel.
_uploads = ThreadPoolExecutor(max_workers=32, thread_name_prefix="s3-upload")


def new_id() -> str:
    return uuid.uuid4().hex


def display_name(raw: str | None) -> str:
    """The file name as shown to people: no directories, no control characters, bounded length.
    It is only ever displayed or stored as metadata, never used as a path or key."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:200]
    return name or "image"


def check(settings: Settings, uploads: list[Upload]) -> tuple[list, list]:
    """The edge checks of a request's files: (accepted [(image, data)], rejected [(image, BadImage)]),
    each image a new {"id", "name"}; every file bad: Rejected, with the reasons."""
    if not uploads:
        raise Rejected("no images: send one or more files in the form field 'images'")
    if len(uploads) > settings.max_files:
        raise Rejected(f"{len(uploads)} files in one request; the limit is {settings.max_files}", 413)
    accepted, rejected = [], []
    for upload in uploads:
        image = {"id": new_id(), "name": display_name(upload.name)}
        try:
            check_upload(upload.data, settings.max_image_bytes, settings.max_image_pixels)
            accepted.append((image, upload.data))
        except BadImage as exc:
            rejected.append((image, exc))
    if not accepted:
        statuses = {exc.status for _, exc in rejected}
        reasons = "; ".join(f"{image['name']}: {exc}" for image, exc in rejected)
        raise Rejected(reasons, statuses.pop() if len(statuses) == 1 else 400)
    return accepted, rejected


def submit(settings: Settings, uploads: list[Upload], owner: str = "", callback_url: str = "",
           api_key: str = "") -> dict:
    """Store and enqueue the images of one request: the job, with how many images were queued.
    Images failing the edge checks get an error result at once, unless all fail: then the request is
    rejected with the reasons. Images that could not be queued get an error result too; if none
    could be, Rejected (503). With `callback_url`, the job's status is POSTed there when it is done
    (daas.callbacks), signed with `api_key`'s secret."""
    secret = callback(settings, callback_url, api_key) if callback_url else ""
    accepted, rejected = check(settings, uploads)
    job, keys, errors = enqueue(settings, accepted, rejected, owner=owner,
                                extra={"callback_url": callback_url} if callback_url else {},
                                order=in_upload_order(uploads, accepted, rejected))
    if errors and not keys:
        raise Rejected("; ".join(sorted(set(errors.values()))), 503)
    if callback_url:
        callbacks.register(settings, "job", job["job_id"], callback_url, secret, owner)
    return {**job, "queued": len(keys)}


def in_upload_order(uploads: list[Upload], accepted: list, rejected: list) -> list[dict]:
    """The images of `check`'s two lists in the order of the request's files, so that a client can
    pair the job's images with the files it sent by position (each list keeps that order; an
    accepted image carries its upload's data)."""
    taken = {id(data) for _, data in accepted}
    accepted_images, rejected_images = iter(image for image, _ in accepted), iter(image for image, _ in rejected)
    return [next(accepted_images if id(upload.data) in taken else rejected_images) for upload in uploads]


def callback(settings: Settings, url: str, api_key: str) -> str:
    """The signing secret of a request's callback, once its URL is checked; Rejected (400) saying why not."""
    try:
        callbacks.check_url(settings, url)
        return callbacks.secret_for(settings, api_key)
    except callbacks.Refused as exc:
        raise Rejected(str(exc)) from None


def not_queued(reason: str) -> str:
    """The error of an image that was never enqueued: what happened, and what to do."""
    return f"the image could not be queued ({reason}): upload it again"


def enqueue(settings: Settings, accepted: list, rejected: list = (), owner: str = "",
            keep: Callable[[list[dict]], list[dict]] | None = None, extra: dict | None = None,
            order: list[dict] | None = None) -> tuple[dict, dict[str, str], dict[str, str]]:
    """Store checked images as one job and enqueue them in chunks: (the job, {image id: the
    results key of its chunk} for the images enqueued, {image id: why not} for the others).

    Each chunk is stored as one object (a pack, see daas.storage): an upload that can no longer be
    read fails alone, a refused PUT fails its chunk. `keep`, given the images stored, returns those
    still wanted (the coalescer drops the requests that stopped waiting). Every image of the
    manifest that is not enqueued gets an error result, so the job finishes (issue 16: a send
    failing mid-loop had left jobs "running" for ever). `owner` (a hash of the API key, see
    web.auth.owner) is recorded in the manifest: only that key reads the job. `extra` goes into the
    manifest (a callback's URL). `order`: the images as the job lists them (default: the accepted,
    then the rejected). Raises Rejected (503) when the job itself could not be stored: then nothing
    was enqueued."""
    job_id = new_id()
    images = order or [image for image, _ in accepted] + [image for image, _ in rejected]
    stored, errors = _store(settings, {"job_id": job_id, "created": time.time(), "images": images,
                                       **({"owner": owner} if owner else {}), **(extra or {})}, accepted, rejected)
    everything = [image for pack in stored for image in pack.images]
    kept_ids = {image["id"] for image in (keep(everything) if keep else everything)}
    errors.update({image["id"]: not_queued("its request had stopped waiting")
                   for image in everything if image["id"] not in kept_ids})
    keys, unsent = _send(settings, job_id, [pack.keeping(kept_ids) for pack in stored])
    errors.update(unsent)
    _record_errors(settings, job_id, [image for image, _ in accepted if image["id"] in errors], errors)
    if keys:
        nudge_autoscaler(settings)
    return {"job_id": job_id, "images": images}, keys, errors


@dataclass
class Pack:
    """A chunk of a job's images stored as one object (storage.pack_key of its first image), and
    where each image lies in it: ([offset, size], in bytes)."""

    first: str
    images: list[dict]
    spans: list[list[int]]

    def keeping(self, ids: set[str]) -> "Pack":
        """The same object, with only the images of `ids` (the others are not sent)."""
        kept = [(image, span) for image, span in zip(self.images, self.spans) if image["id"] in ids]
        return Pack(self.first, [image for image, _ in kept], [span for _, span in kept])

    def message(self) -> list:
        """How a task names it (daas.tasks.classify's `pack`)."""
        return [self.first, self.spans]


def _store(settings: Settings, manifest: dict, accepted: list, rejected: list) -> tuple[list[Pack], dict[str, str]]:
    """Write the manifest, the error results of `rejected` and the accepted images, a pack per
    chunk, in parallel: (the packs stored, {image id: why not} of the other images). Rejected (503)
    when the job itself could not be written."""
    job_id = manifest["job_id"]
    job_writes = [_uploads.submit(storage.put_manifest, settings, manifest)]
    if rejected:
        job_writes.append(_uploads.submit(storage.put_results, settings, job_id,
                                          [results.error(job_id, i["id"], i["name"], str(e)) for i, e in rejected]))
    readable, errors = [], {}
    for image, data in accepted:
        try:
            readable.append((image, data, storage.size_of(data)))
        except (OSError, ValueError) as exc:  # a closed or vanished upload fails alone, before any PUT
            errors[image["id"]] = not_queued(f"storing it failed: {exc}")
    writes = []
    for chunk in chunks(readable, settings.images_per_task):
        sizes = [size for _, _, size in chunk]
        pack = Pack(chunk[0][0]["id"], [image for image, _, _ in chunk],
                    [[start, size] for start, size in zip(itertools.accumulate(sizes, initial=0), sizes)])
        writes.append((pack, _uploads.submit(storage.put_pack, settings, storage.pack_key(job_id, pack.first),
                                             [data for _, data, _ in chunk], sizes)))
    stored = []
    for pack, write in writes:
        try:
            write.result()
            stored.append(pack)
        except Exception as exc:
            errors.update({image["id"]: not_queued(f"storing it failed: {exc}") for image in pack.images})
    try:
        for write in job_writes:
            write.result()
    except Exception as exc:  # no manifest, no job: nothing is enqueued, every request answers 503
        raise Rejected(not_queued(f"the job could not be stored: {exc}"), 503) from exc
    return stored, errors


def _send(settings: Settings, job_id: str, packs: list[Pack]) -> tuple[dict[str, str], dict[str, str]]:
    """Send a task per stored pack (its images still wanted): ({image id: results key} of the tasks
    sent, {image id: why not} of the others). The first refusal ends the loop: a broker that is down
    would have a request wait for each task's retries in turn."""
    from daas.tasks import classify

    keys, pending, sent = {}, [pack for pack in packs if pack.images], 0
    try:
        reply_to = replies.for_settings(settings).queue_url()  # the worker sends the results back here too
        for pack in pending:  # only once its images are stored
            chunk = [[image["id"], image["name"]] for image in pack.images]
            classify.apply_async((job_id, chunk), {"reply_to": reply_to, "sent_at": round(time.time(), 3),
                                                   "pack": pack.message()}, queue=settings.queue)
            keys.update(dict.fromkeys((image_id for image_id, _ in chunk), storage.results_key(job_id, chunk[0][0])))
            sent += 1
    except Exception as exc:
        log.warning("job %s: %d of %d tasks sent, then: %r", job_id, sent, len(pending), exc)
        reason = not_queued(f"the queue refused it: {exc}")
        return keys, {image["id"]: reason for pack in pending[sent:] for image in pack.images}
    return keys, {}


def _record_errors(settings: Settings, job_id: str, images: list[dict], errors: dict[str, str]) -> None:
    """Error results for the images of the manifest that were not enqueued: the job finishes, and
    its status says what to do. One object, at the key of its first image (never a chunk's key: no
    image of a chunk sent is among them)."""
    if not images:
        return
    try:
        storage.put_results(settings, job_id, [results.error(job_id, i["id"], i["name"], errors[i["id"]])
                                               for i in images])
    except Exception as exc:  # the requests still answer with the reason; only the job's status lacks it
        log.warning("job %s: could not store the errors of %d images not queued: %r", job_id, len(images), exc)


def chunks(items: list, most: int) -> list[list]:
    """`items` in as few consecutive chunks of at most `most` as possible, of near-equal sizes.

    One task per chunk: each queue message (send, receive, delete, task events), input object (a
    pack) and result object then serves several images, which cuts the per-image cost of the
    worker, of the queue and of the endpoint behind it (see README, Performance).
    """
    count = math.ceil(len(items) / max(most, 1))
    size, extra = divmod(len(items), count) if count else (0, 0)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[start:end] for start, end in zip(bounds, bounds[1:])]


_last_nudge = 0.0


def nudge_autoscaler(settings: Settings) -> None:
    """Ask for a scaling decision now rather than at the next beat tick: from zero workers, the
    first image should not wait up to DAAS_SCALE_INTERVAL for the scaler to notice it. At most
    one nudge a second per web process; a nudge nobody takes in time expires. Best effort: the
    beat ticks every DAAS_SCALE_INTERVAL anyway."""
    global _last_nudge
    from daas.autoscale import scale

    if time.monotonic() - _last_nudge < 1.0:
        return
    _last_nudge = time.monotonic()
    try:
        scale.apply_async(queue=settings.control_queue, expires=settings.scale_interval)
    except Exception as exc:  # the images are queued already: a failed request would have them sent, and run, twice
        log.warning("could not nudge the autoscaler (its next tick scales instead): %r", exc)


def status(settings: Settings, job_id: str, owner: str = "") -> dict | None:
    """The job with each image's state; None for an unknown job id, and for a job `owner` did not
    create (one API key never reads another's jobs: issue 16)."""
    if not re.fullmatch(r"[0-9a-f]{32}", job_id):
        return None
    key = storage.manifest_key(job_id)
    manifest = replies.cache.get_many([key]).get(key) or storage.get_manifest(settings, job_id)
    if manifest is None or not hmac.compare_digest(manifest.get("owner", ""), owner):
        return None
    replies.cache.put_many({key: manifest})
    finished = storage.finished_keys(settings, job_id)
    known = replies.cache.get_many(list(finished))
    fetched = storage.get_many_results(settings, sorted(finished - known.keys()))
    replies.cache.put_many(fetched)
    by_id = {result["id"]: result for chunk in (*known.values(), *fetched.values()) for result in chunk}
    images = [by_id.get(image["id"]) or results.queued(image["id"], image["name"]) for image in manifest["images"]]
    done = sum(image["status"] != "queued" for image in images)
    state = "done" if done == len(images) else ("running" if done else "queued")
    job = {"job_id": job_id, "status": state, "finished": done, "total": len(images), "images": images}
    if manifest.get("callback_url") and state == "done":  # no call while it runs: nothing to show yet
        job["callback"] = callbacks.outcome(settings, "job", job_id)
    return job
