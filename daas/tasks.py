"""Celery tasks: `daas.classify` on the classify queue; the controller's tasks on the control queue."""
from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time

from botocore.exceptions import ClientError

from daas import aws, batches, config, fleet, leases, replies, results, storage
from daas.aws import client, queue_url
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


_batch_tick = threading.Lock()


@app.task(name="daas.batch_tick", ignore_result=True)
def batch_tick() -> dict:
    """The controller's batch and callback turn (every DAAS_BATCH_INTERVAL, and nudged by a new
    batch or a listing not yet complete): list and finish batches, deliver the callbacks of
    finished jobs and batches. A tick that finds the previous one still going skips."""
    from daas import callbacks

    if not _batch_tick.acquire(blocking=False):
        return {}
    try:
        done = {"batches": batches.tick(settings()), "callbacks": callbacks.tick(settings())}
    finally:
        _batch_tick.release()
    if "listing" in done["batches"].values():  # a listing goes on at once, not at the next beat
        batches.nudge(settings())
    return done


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


@app.task(name="daas.reap_dead_letters", ignore_result=True)
def reap_dead_letters() -> int:
    return reap(settings())


def reap(cfg: config.Settings) -> int:
    """Turn messages that SQS dead-lettered (their task failed on every delivery) into error results;
    returns how many images it gave up on. A message whose results cannot be stored now stays in the
    dead-letter queue for the next run; one that is not a daas task is logged and dropped."""
    from daas import metrics

    reaped = _reap(cfg)
    metrics.dead_letter_images.inc(reaped)
    return reaped


def _reap(cfg: config.Settings) -> int:
    sqs = client("sqs", cfg)
    url = queue_url(cfg, cfg.dead_letter_queue)
    reaped = 0
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return reaped
        for message in messages:
            task = classify_args(cfg, message["Body"])
            chunk = None if task else batch_chunk_args(message["Body"])
            if chunk is not None:
                try:
                    reaped += record_failure_of_chunk(cfg, *chunk, f"the image could not be classified: "
                                                   f"{cfg.max_receives} attempts failed (a worker stopped, or "
                                                   "storage was unavailable)")
                except Exception as exc:
                    log.error("could not store the error results of a dead-lettered chunk of batch %s (retried "
                              "at the next run): %r", chunk[0], exc)
                    continue
            elif task is None:
                log.warning("dropping a dead-lettered message that is not a daas task: %.200r", message["Body"])
            else:
                try:
                    reaped += record_failure(cfg, *task, (
                        f"the image could not be classified: {cfg.max_receives} attempts failed (a worker "
                        "stopped, or storage was unavailable); please upload it again"))
                except Exception as exc:  # storage still down: the message waits for the next run
                    log.error("could not store the error results of dead-lettered job %s (retried at the "
                              "next run): %r", task[0], exc)
                    continue
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


_housekeeping = threading.Lock()


@app.task(name="daas.housekeeping", ignore_result=True)
def housekeeping() -> dict:
    """The controller's periodic housekeeping (every DAAS_SWEEP_INTERVAL): end broken workers, then
    delete what dead processes left behind. A run that finds the previous one still going (the
    controller's tasks run on threads) skips: the next one does the work."""
    from daas.autoscale import observed, provider, retire_surplus

    if not _housekeeping.acquire(blocking=False):
        log.warning("housekeeping skipped: the previous run is still going")
        return {}
    try:
        cfg = settings()
        ended, live = end_broken_workers(cfg, provider())
        try:
            records = learn_worker_rates(cfg, live, provider(), observed())
            retire_surplus(cfg, records, provider(), observed())
        except Exception as exc:  # the policy keeps its last estimate; the sweep goes on
            log.warning("could not read the workers' counts or retire a surplus (the scaler keeps its "
                        "estimate): %r", exc)
        return {"ended": ended, "removed": sweep(cfg)}
    finally:
        _housekeeping.release()


def end_broken_workers(cfg: config.Settings, workers) -> tuple[dict[str, str], set[str]]:
    """Terminate the provider's workers that never joined, stopped beating or outlived their lifetime
    (see daas.fleet.verdicts), and forget the records of dead workers. Returns ({worker id: why
    it ended}, the records of the live workers, named as daas.fleet.heartbeats names them)."""
    beats, now = fleet.heartbeats(cfg), time.time()
    known, owner = workers.workers(), fleet.owners(beats, workers.worker_id)
    ended = fleet.verdicts(known, fleet.latest_by_worker(beats, owner), now,
                           join_timeout=cfg.ec2_join_timeout, stale_after=cfg.stale_after,
                           max_lifetime=cfg.max_lifetime)
    for worker_id, why in ended.items():
        log.warning("ending worker %s: it %s", worker_id, why)
    workers.terminate(list(ended))
    alive = {worker.id for worker in known} - ended.keys()
    live_nodes = set()
    for node, at in beats.items():
        if now - at <= cfg.stale_after and (owner[node] is None or owner[node] in alive):
            live_nodes.add(node)
        else:
            fleet.forget(cfg, node)
    return ended, live_nodes


def learn_worker_rates(cfg: config.Settings, live: set[str], workers, seen) -> dict[str, dict[str, dict]]:
    """Read the live workers' records (one GET each) and let the scaling policy learn from their
    counts how many images a second one worker classifies (daas.observed). Returns the records,
    {worker id: {record name: record}}."""
    by_worker: dict[str, dict[str, dict]] = {}
    for name, worker_id in fleet.owners(dict.fromkeys(live), workers.worker_id).items():
        record = fleet.read(cfg, name) if worker_id is not None else None
        if record is not None:
            by_worker.setdefault(worker_id, {})[name] = record
    seen.learn_rates(by_worker)
    return by_worker


def sweep(cfg: config.Settings, expires_after: float | None = None, page_size: int = 1000) -> list[str]:
    """Delete the per-process queues and SNS subscriptions that killed processes left behind.

    Clean exits remove their own (daas.transport, daas.replies); a SIGKILLed worker, web process or
    Flower cannot. A per-process queue is an orphan when its owner stopped renewing its lease
    (daas.leases): never judged by its contents or by its name alone. A subscription goes only when
    SQS says definitely that its queue does not exist (a throttled call proves nothing).
    """
    sqs, sns, now, removed = client("sqs", cfg), client("sns", cfg), time.time(), []
    expires_after = cfg.queue_lease_expiry if expires_after is None else expires_after
    for name, url in stack_queue_candidates(sqs, cfg.stack, page_size):
        try:
            tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
            created = None if leases.STACK_TAG in tags and leases.ALIVE_TAG in tags else float(
                sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
                ["Attributes"]["CreatedTimestamp"])
            if leases.orphaned(cfg.stack, name, tags, created, now, expires_after):
                sqs.delete_queue(QueueUrl=url)
                removed.append(name)
        except ClientError as exc:
            if not replies.queue_missing(exc):  # gone meanwhile: its process deleted it
                log.warning("could not sweep queue %s (tried again at the next run): %r", name, exc)
    for topic_arn in (aws.topic_arn(cfg, name) for name in aws.topic_names(cfg)):
        pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
        for subscription in (s for page in pages for s in page["Subscriptions"] if s["Protocol"] == "sqs"):
            try:
                sqs.get_queue_url(QueueName=subscription["Endpoint"].rsplit(":", 1)[1])
            except ClientError as exc:
                if replies.queue_missing(exc):
                    sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
                    removed.append(subscription["SubscriptionArn"])
                else:
                    log.warning("could not tell whether the queue of %s exists (kept): %r",
                                subscription["SubscriptionArn"], exc)
    if removed:
        log.info("swept %d orphaned queues and subscriptions: %s", len(removed), removed)
    return removed


def stack_queue_candidates(sqs, stack: str, page_size: int = 1000):
    """(name, url) of every queue whose name has the shape of a per-process queue of `stack`, over
    every page of the listing (ListQueues returns at most 1,000 a call)."""
    for page in sqs.get_paginator("list_queues").paginate(PaginationConfig={"PageSize": page_size}):
        for url in page.get("QueueUrls", []):
            name = url.rsplit("/", 1)[1]
            if leases.maybe_per_process(stack, name):
                yield name, url
