"""Celery tasks: `daas.classify` on the classify queue; the controller's tasks on the control queue."""
from __future__ import annotations

import base64
import functools
import json
import logging

from botocore.exceptions import BotoCoreError, ClientError
from celery import Task

from daas import config, results, storage
from daas.aws import client, queue_url
from daas.celery_app import app
from daas.images import BadImage

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
        job_id, image_id, name = args
        message = f"the image could not be processed: internal error ({type(exc).__name__}); please retry"
        try:
            storage.put_result(settings(), results.error(job_id, image_id, name, message))
        except Exception:  # storage itself is down: the job shows the image as queued
            log.exception("could not record the failure of image %s", image_id)


@app.task(base=ClassifyTask, name="daas.classify")
def classify(job_id: str, image_id: str, name: str) -> None:
    from daas.worker import classify_image  # torch is imported by workers only

    storage.put_result(settings(), classify_image(settings(), job_id, image_id, name))


def decode_task_message(body: str) -> tuple[str, list]:
    """Task name and positional args of a raw Celery message as kombu's SQS transport sends it."""
    envelope = json.loads(base64.b64decode(body))
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    return envelope["headers"]["task"], args


@app.task(name="daas.reap_dead_letters", ignore_result=True)
def reap_dead_letters() -> int:
    return reap(settings())


def reap(cfg: config.Settings) -> int:
    """Turn messages that SQS dead-lettered (their worker died on every attempt) into error results."""
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
                job_id, image_id, name = args
                storage.put_result(cfg, results.error(
                    job_id, image_id, name,
                    f"the worker stopped while classifying this image {cfg.max_receives} times; giving up"))
                reaped += 1
            else:
                log.warning("dropping an unreadable dead-lettered message %s", message["MessageId"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

