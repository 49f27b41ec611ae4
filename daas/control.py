"""The controller's Celery tasks, on the control queue (beat sends them; the scaler's `daas.scale`
is in daas.autoscale): the batch and callback turn (`daas.batch_tick`), the dead-letter reaper
(`daas.reap_dead_letters`) and housekeeping (`daas.housekeeping`: broken workers ended, the
workers' rates learned and a steady load's surplus retired, orphaned queues and subscriptions
swept). The workers' tasks are in daas.tasks."""
from __future__ import annotations

import logging
import threading
import time

from botocore.exceptions import ClientError

from daas import aws, batches, config, fleet, leases, replies
from daas.aws import client, queue_url
from daas.celery_app import app
from daas.tasks import batch_chunk_args, classify_args, record_failure, record_failure_of_chunk, settings

log = logging.getLogger(__name__)


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
