"""The workers' Celery tasks, on the classify queue: `daas.classify` (a chunk of a job) and
`daas.classify_objects` (a chunk of a batch); what their arguments may be, and the error results of
one that failed on every delivery (written by the controller's reaper, daas.control)."""
from __future__ import annotations

import base64
import functools
import json
import logging
import time

from daas import batches, config, replies, results, storage
from daas.celery_app import app

log = logging.getLogger(__name__)


@functools.cache
def settings() -> config.Settings:
    return config.load()


# A task that fails (storage unreachable, a bug) is not acknowledged: its message stays with SQS,
# which delivers it again after the visibility timeout and, after DAAS_MAX_RECEIVES deliveries,
# moves it to the dead-letter queue, where the reaper stores error results for its images. Nothing
# is acknowledged into silence, and no error result is written while storage may be down.
@app.task(name="daas.classify", acks_on_failure_or_timeout=False)
def classify(job_id: str, chunk: list[list[str]], reply_to: str | None = None, sent_at: float | None = None,
             pack: list | None = None) -> int:
    """Classify a chunk of a job's images ([image_id, name] pairs, see daas.jobs.chunks), read from
    the input bucket's object `pack` names ([its first image id, [offset, size] of each image], see
    daas.jobs.Pack; without it, from one object per image, as releases before stored them), store
    their results in one object, and send them to the web process that enqueued the chunk
    (`reply_to`, see daas.replies). Each result's timings include the chunk's wait in the queue
    (from `sent_at`, the web host's clock; EC2 hosts keep theirs in step with NTP); the reply
    carries the results' PUT time too (daas.metrics counts both). Returns how many images it
    classified (Flower shows it)."""
    from daas.pipeline import classify_chunk  # torch is imported by workers only

    started = time.time()
    problem = invalid_task(settings(), job_id, chunk, reply_to, sent_at, pack)
    if problem:  # acknowledged and dropped: running it would write where it says, retrying changes nothing
        log.warning("dropping a daas.classify task with invalid arguments (not run): %s", problem)
        return 0
    documents = classify_chunk(settings(), job_id, chunk, pack=pack)
    if sent_at is not None:
        for document in documents:
            if "timings_ms" in document:
                document["timings_ms"]["queue"] = round(max(0.0, started - sent_at) * 1000, 2)
    stored = time.perf_counter()
    storage.put_results(settings(), job_id, documents)
    if reply_to:
        replies.send(settings(), reply_to, storage.results_key(job_id, chunk[0][0]), documents,
                     store_ms=(time.perf_counter() - stored) * 1000)
    return len(chunk)


@app.task(name="daas.classify_objects", acks_on_failure_or_timeout=False)
def classify_objects(batch_id: str, chunk: int, keys: list[str]) -> int:
    """Classify a chunk of a batch's images, read from its source bucket (see daas.batches), and
    store them as one part of its output. A chunk already finished (sent twice, or redelivered
    after its worker stopped) or of a cancelled batch is skipped. Returns how many images it
    classified."""
    from daas.pipeline import classify_objects as classify_keys

    problem = batches.invalid_chunk(batch_id, chunk, keys, settings().max_files)
    batch = None if problem else batches.definition(settings(), batch_id)
    if problem or batch is None:
        log.warning("dropping a daas.classify_objects task (not run): %s", problem or f"no batch {batch_id}")
        return 0
    name = batches.chunk_name(chunk, keys)
    if batches.settled(settings(), batch_id, name):
        log.info("batch %s: chunk %s is finished or cancelled: skipped", batch_id, name)
        return 0
    documents = classify_keys(settings(), batch["source"]["bucket"], keys)
    batches.store_part(settings(), batch, name, [batches.line(document) for document in documents])
    return len(keys)


def invalid_task(cfg: config.Settings, job_id: object, chunk: object, reply_to: object = None,
                 sent_at: object = None, pack: object = None) -> str | None:
    """Why a daas.classify task's arguments must not be run (None: they may). A task can come from
    anyone who can send to the queue or reach Flower's API (which runs any task): the ids become
    keys in both buckets (`jobs` or `workers` as a job id would overwrite manifests or heartbeat
    records) and the reply queue receives results, so they are checked as strictly as the web tier
    makes them."""
    if not storage.is_id(job_id):
        return f"the job id {str(job_id)[:80]!r} is not a generated id"
    if not isinstance(chunk, list) or not 0 < len(chunk) <= cfg.max_files:
        return f"the chunk must be a list of 1 to {cfg.max_files} [image id, name] pairs"
    for image in chunk:
        if not (isinstance(image, list) and len(image) == 2 and storage.is_id(image[0])
                and isinstance(image[1], str) and len(image[1]) <= 200):
            return f"{str(image)[:120]} is not an [image id, name] pair"
    if sent_at is not None and (not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool)):
        return "sent_at must be a time in seconds"
    if pack is not None and not _is_pack(pack, len(chunk)):
        return f"{str(pack)[:120]} is not [a first image id, [offset, size] of each image]"
    if reply_to is not None and not replies.is_reply_queue(cfg, reply_to):
        return f"{str(reply_to)[:200]!r} is not a reply queue of stack {cfg.stack}"
    return None


def _is_pack(pack: object, images: int) -> bool:
    def is_count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (isinstance(pack, list) and len(pack) == 2 and storage.is_id(pack[0]) and isinstance(pack[1], list)
            and len(pack[1]) == images
            and all(isinstance(span, list) and len(span) == 2 and all(map(is_count, span)) for span in pack[1]))


def record_failure(cfg: config.Settings, job_id: str, chunk: list[list[str]], message: str) -> int:
    """Error results for the images of a failed task, unless its results were stored before the
    failure (a worker that died between storing them and acknowledging the message). Returns how
    many images it gave up on."""
    first_image_id = chunk[0][0]
    if storage.get_results(cfg, storage.results_key(job_id, first_image_id)) is not None:
        return 0
    storage.put_results(cfg, job_id, [results.error(job_id, image_id, name, message) for image_id, name in chunk])
    return len(chunk)


def decode_task_message(body: str) -> tuple[str, list]:
    """Task name and positional args of a raw Celery message as kombu's SQS transport sends it."""
    envelope = json.loads(base64.b64decode(body))
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    return envelope["headers"]["task"], args


def classify_args(cfg: config.Settings, body: str) -> tuple[str, list[list[str]]] | None:
    """(job_id, chunk) of a raw daas.classify message; None for anything else."""
    try:
        task, (job_id, chunk) = decode_task_message(body)
        if task == "daas.classify" and invalid_task(cfg, job_id, chunk) is None:
            return job_id, chunk
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return None


def batch_chunk_args(body: str) -> tuple[str, int, list[str]] | None:
    """(batch_id, chunk, keys) of a raw daas.classify_objects message; None for anything else."""
    try:
        task, (batch_id, chunk, keys) = decode_task_message(body)
        if task == batches.TASK and batches.invalid_chunk(batch_id, chunk, keys, 10_000) is None:
            return batch_id, chunk, keys
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return None


def record_failure_of_chunk(cfg: config.Settings, batch_id: str, chunk: int, keys: list[str], message: str) -> int:
    """Error lines for a dead-lettered chunk of a batch, unless it finished after all."""
    batch = batches.get_state(cfg, batch_id)
    name = batches.chunk_name(chunk, keys)
    if batch is None or batches.settled(cfg, batch_id, name):
        return 0
    batches.store_part(cfg, batch, name, [{"key": key, "label": None, "score": None, "top5": [], "error": message}
                                           for key in keys])
    return len(keys)
