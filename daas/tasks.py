"""Celery tasks: `daas.classify` on the classify queue; the controller's tasks on the control queue."""
from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import time

from botocore.exceptions import ClientError

from daas import config, fleet, replies, results, storage
from daas.aws import client, queue_url
from daas.broker import pidbox_queue
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
def classify(job_id: str, chunk: list[list[str]], reply_to: str | None = None) -> int:
    """Classify a chunk of a job's images ([image_id, name] pairs, see daas.jobs.chunks), store
    their results in one object, and send them to the web process that enqueued the chunk
    (`reply_to`, see daas.replies). Returns how many images it classified (Flower shows it)."""
    from daas.pipeline import classify_chunk  # torch is imported by workers only

    documents = classify_chunk(settings(), job_id, chunk)
    storage.put_results(settings(), job_id, documents)
    if reply_to:
        replies.send(settings(), reply_to, storage.results_key(job_id, chunk[0][0]), documents)
    return len(chunk)


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


def classify_args(body: str) -> tuple[str, list[list[str]]] | None:
    """(job_id, chunk) of a raw daas.classify message; None for anything else."""
    try:
        task, (job_id, chunk) = decode_task_message(body)
        if task == "daas.classify" and isinstance(job_id, str) and chunk and all(
                isinstance(image, list) and len(image) == 2 for image in chunk):
            return job_id, chunk
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return None


@app.task(name="daas.reap_dead_letters", ignore_result=True)
def reap_dead_letters() -> int:
    return reap(settings())


def reap(cfg: config.Settings) -> int:
    """Turn messages that SQS dead-lettered (their task failed on every delivery) into error results;
    returns how many images it gave up on. A message whose results cannot be stored now stays in the
    dead-letter queue for the next run; one that is not a daas task is logged and dropped."""
    sqs = client("sqs", cfg)
    url = queue_url(cfg, cfg.dead_letter_queue)
    reaped = 0
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return reaped
        for message in messages:
            task = classify_args(message["Body"])
            if task is None:
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
    from daas.autoscale import provider

    if not _housekeeping.acquire(blocking=False):
        log.warning("housekeeping skipped: the previous run is still going")
        return {}
    try:
        cfg = settings()
        ended, live_nodes = end_broken_workers(cfg, provider())
        return {"ended": ended, "removed": sweep(cfg, {pidbox_queue(cfg, node) for node in live_nodes})}
    finally:
        _housekeeping.release()


def end_broken_workers(cfg: config.Settings, workers) -> tuple[dict[str, str], set[str]]:
    """Terminate the provider's workers that never joined, stopped beating or outlived their lifetime
    (see daas.fleet.verdicts), and forget the records of dead workers. Returns ({worker id: why
    it ended}, the nodes of the live workers)."""
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


def sweep(cfg: config.Settings, live_pidboxes: set[str], event_backlog: int = 30,
          reply_age: float = 300, pidbox_age: float | None = None,
          silent_for: float = 3 * replies.REFRESH_EVERY) -> list[str]:
    """Delete the per-process queues and SNS subscriptions that killed processes left behind.

    Clean exits remove their own (daas.transport, daas.replies); a SIGKILLed worker, web process or
    Flower cannot. An event queue nobody drains fills with heartbeats; a pidbox queue older than
    `pidbox_age` (default: the heartbeat staleness limit) whose worker is not live is dead; a remote
    control reply queue outlives its `inspect` call by seconds only; a web process's reply queue
    whose attributes were not refreshed for `silent_for` seconds lost its listener.
    """
    sqs, sns, stack = client("sqs", cfg), client("sns", cfg), re.escape(cfg.stack)
    pidbox_age = cfg.stale_after if pidbox_age is None else pidbox_age
    events = re.compile(rf"^{stack}-celeryev-[0-9a-f-]{{36}}$")
    control_replies = re.compile(rf"^[0-9a-f-]{{36}}-reply-{stack}-pidbox$")
    pidbox = re.compile(rf"^.+-{stack}-pidbox$")
    web_replies = re.compile(rf"^{stack}-replies-[0-9a-f]{{32}}$")
    removed = []
    for url in sqs.list_queues(QueueNamePrefix="", MaxResults=1000).get("QueueUrls", []):
        name = url.rsplit("/", 1)[1]
        if not (events.match(name) or pidbox.match(name) or web_replies.match(name)):
            continue
        try:
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        except sqs.exceptions.QueueDoesNotExist:  # its process deleted it meanwhile
            continue
        age = time.time() - float(attributes["CreatedTimestamp"])
        if events.match(name):
            orphan = int(attributes["ApproximateNumberOfMessages"]) >= event_backlog
        elif web_replies.match(name):
            orphan = time.time() - float(attributes["LastModifiedTimestamp"]) > silent_for
        elif control_replies.match(name):
            orphan = age > reply_age
        else:
            orphan = name not in live_pidboxes and age > pidbox_age
        if orphan:
            sqs.delete_queue(QueueUrl=url)
            removed.append(name)
    for topic in sns.list_topics()["Topics"]:
        if not topic["TopicArn"].rsplit(":", 1)[1].startswith(f"{cfg.stack}-"):
            continue
        pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic["TopicArn"])
        for subscription in (s for page in pages for s in page["Subscriptions"] if s["Protocol"] == "sqs"):
            try:
                sqs.get_queue_url(QueueName=subscription["Endpoint"].rsplit(":", 1)[1])
            except ClientError:
                sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
                removed.append(subscription["SubscriptionArn"])
    if removed:
        log.info("swept %d orphaned queues and subscriptions: %s", len(removed), removed)
    return removed
