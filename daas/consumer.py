"""The Celery consumer of every daas worker and of the controller (`worker_consumer` in celeryconfig).

A message on one of our queues that is not a Celery task message of ours (another program's, a
hand-written one, a damaged one) is rejected with a warning. Celery's own handling crashed the
whole worker on some of them (`{"headers": {"task": "nope"}, "body": "x"}`: a TypeError inside
`on_unknown_task`, once per delivery, see celery/kombu#2421) and acknowledged, that is deleted,
others it could not decode. Rejected without requeue, a message stays with SQS: the classify
queue's redrive policy moves it to the dead-letter queue after DAAS_MAX_RECEIVES deliveries, where
the reaper logs it.
"""
from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

log = logging.getLogger(__name__)


def is_task_message(message: Message, registered) -> bool:
    """Whether `message` is a task message of Celery's protocol 2 for a registered task: headers
    with a task name and an id, and a body that decodes to (args, kwargs, embed)."""
    headers = message.headers
    if not isinstance(headers, dict) or not all(isinstance(headers.get(key), str) for key in ("id", "task")):
        return False
    if headers["task"] not in registered:
        return False
    try:
        body = message.decode()  # cached: Celery does not decode it again
    except Exception:  # any decoding failure: not ours
        return False
    return (isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[0], (list, tuple))
            and isinstance(body[1], dict) and isinstance(body[2], dict))


def describe(message: Message, limit: int = 200) -> str:
    body = message.body if isinstance(message.body, str) else repr(message.body)
    return f"headers {message.headers!r:.{limit}}, body {body!r:.{limit}}"


class Consumer(CeleryConsumer):
    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message):
            if is_task_message(message, self.app.tasks):
                return handle(message)
            log.warning("rejected a message that is not a daas task (SQS dead-letters it after "
                        "repeated deliveries): %s", describe(message))
            message.reject_log_error(log, self.connection_errors)

        return on_task_received
