"""Celery tasks: `daas.classify` on the classify queue; the controller's tasks on the control queue."""
from __future__ import annotations

import base64
import functools
import json
import logging
import time

from botocore.exceptions import BotoCoreError, ClientError
from celery import Task

from daas import config, results, storage
from daas.aws import client, queue_url
from daas.celery_app import app

log = logging.getLogger(__name__)


@functools.cache
def settings() -> config.Settings:
    return config.load()


class ClassifyTask(Task):
    # Storage hiccups are retried with backoff; anything still failing becomes an error result,
    # so that no job waits forever on an image that will never be labelled.
    autoretry_for = (BotoCoreError, ClientError)
    retry_backoff = 1
    max_retries = 3

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id, chunk = args
        message = f"the image could not be processed: internal error ({type(exc).__name__}); please retry"
        try:
            record_failure(settings(), job_id, chunk, message)
        except Exception:  # storage itself is down: the job shows the images as queued
            log.exception("could not record the failure of the images %s", chunk)


@app.task(base=ClassifyTask, name="daas.classify")
def classify(job_id: str, chunk: list[list[str]]) -> int:
    """Classify a chunk of a job's images ([image_id, name] pairs, see daas.jobs.chunks) and store
    their results in one object. Returns how many images it classified (Flower shows it)."""
    from daas.worker import classify_chunk  # torch is imported by workers only

    storage.put_results(settings(), job_id, classify_chunk(settings(), job_id, chunk))
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


@app.task(name="daas.reap_dead_letters", ignore_result=True)
def reap_dead_letters() -> int:
    return reap(settings())


def reap(cfg: config.Settings) -> int:
    """Turn messages that SQS dead-lettered (their worker died on every attempt) into error results;
    returns how many images it gave up on."""
    sqs = client("sqs", cfg)
    url = queue_url(cfg, cfg.dead_letter_queue)
    reaped = 0
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return reaped
        for message in messages:
            try:
                task, args = decode_task_message(message["Body"])
            except (ValueError, KeyError, IndexError):
                task, args = None, []
            if task == "daas.classify":
                job_id, chunk = args
                reaped += record_failure(cfg, job_id, chunk, (
                    f"the worker stopped {cfg.max_receives} times while classifying this image or "
                    "another one sent with it; giving up"))
            else:
                log.warning("dropping an unreadable dead-lettered message %s", message["MessageId"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])



@app.task(name="daas.sweep_orphans", ignore_result=True)
def sweep_orphans() -> list[str]:
    from kombu.transport.SQS import CHARS_REPLACE_TABLE

    # The controller running this has remote control off, so it has no pidbox of its own to keep.
    live = {host for reply in app.control.ping(timeout=2.0) or [] for host in reply}
    pidboxes = {f"{host}.{app.conf.control_exchange}.pidbox".translate(CHARS_REPLACE_TABLE) for host in live}
    return sweep(settings(), pidboxes)


def sweep(cfg: config.Settings, live_pidboxes: set[str], event_backlog: int = 30,
          reply_age: float = 300) -> list[str]:
    """Delete the per-process queues and SNS subscriptions that killed processes left behind.

    Clean exits remove their own (daas.transport); a SIGKILLed worker or Flower cannot. An event
    queue nobody drains fills with heartbeats; a pidbox queue whose worker does not answer ping
    is dead; a reply queue outlives its `inspect` call by seconds only.
    """
    import re

    sqs, sns, stack = client("sqs", cfg), client("sns", cfg), re.escape(cfg.stack)
    events = re.compile(rf"^{stack}-celeryev-[0-9a-f-]{{36}}$")
    replies = re.compile(rf"^[0-9a-f-]{{36}}-reply-{stack}-pidbox$")
    pidbox = re.compile(rf"^.+-{stack}-pidbox$")
    removed = []
    for url in sqs.list_queues(QueueNamePrefix="", MaxResults=1000).get("QueueUrls", []):
        name = url.rsplit("/", 1)[1]
        if not (events.match(name) or pidbox.match(name)):
            continue
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        if events.match(name):
            orphan = int(attributes["ApproximateNumberOfMessages"]) >= event_backlog
        elif replies.match(name):
            orphan = time.time() - float(attributes["CreatedTimestamp"]) > reply_age
        else:
            orphan = name not in live_pidboxes
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
