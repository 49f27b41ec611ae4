"""How Celery reaches Amazon SQS: kombu's SQS transport (pycurl) against AWS or a local endpoint."""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

from kombu.transport.SQS import CHARS_REPLACE_TABLE
from kombu.utils.url import safequote

from daas import aws, leases
from daas.config import CONSUMER_LONG_POLL, Settings

LOCAL_CREDENTIALS = ("testing", "testing")  # the local endpoint accepts any credentials


def broker_url(settings: Settings) -> str:
    """`sqs://` for AWS (boto3's credential chain); key, secret, host and port for a local endpoint.

    kombu builds the SQS endpoint from the URL's host and port; it has no endpoint option.
    """
    if not settings.aws_endpoint:
        return "sqs://"
    endpoint = urlsplit(settings.aws_endpoint)
    key = os.environ.get("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIALS[0])
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", LOCAL_CREDENTIALS[1])
    return f"sqs://{safequote(key)}:{safequote(secret)}@{endpoint.hostname}:{endpoint.port}"


TRANSPORT = "daas.transport:Transport"  # kombu's SQS transport with SNS fanout (see daas/transport.py)


def event_exchange(settings: Settings) -> str:
    """Per-stack names, so that two stacks in one account never see each other's workers."""
    return f"{settings.stack}-events"


def control_exchange(settings: Settings) -> str:
    return settings.stack


def pidbox_queue(settings: Settings, node: str) -> str:
    """The SQS name of a worker node's remote-control queue (kombu's pidbox on our control exchange)."""
    return f"{node}.{control_exchange(settings)}.pidbox".translate(CHARS_REPLACE_TABLE)


def fanout_topics(settings: Settings) -> dict[str, str]:
    """{exchange: SNS topic name} of the exchanges that fan out: Celery's events and its remote
    control (pidbox). The topics are the stack's (daas.aws.ensure_resources, or CloudFormation)."""
    events, control = aws.topic_names(settings)
    return {event_exchange(settings): events, f"{control_exchange(settings)}.pidbox": control}


def transport_options(settings: Settings) -> dict:
    return {
        "supports_fanout": True,
        "fanout_topic_exchanges": [event_exchange(settings)],
        "region": settings.region,
        "is_secure": not settings.aws_endpoint.startswith("http://"),
        # Long polling: a receive returns as soon as a message arrives, else after 10 s; no
        # extra sleep after an empty poll, so a new message is never left waiting.
        "wait_time_seconds": CONSUMER_LONG_POLL,
        "polling_interval": 0,
        # Only used when kombu itself creates a queue; ours are created by `daas init` with
        # the same timeout. It must exceed the longest task plus its time waiting in prefetch.
        "visibility_timeout": settings.visibility_timeout,
        # Every queue kombu creates (per-process queues: pidbox, event receivers, `inspect` replies)
        # is tagged with its stack at creation; housekeeping sweeps only its own (daas.leases).
        "queue_tags": {leases.STACK_TAG: settings.stack},
        "daas_lease_interval": settings.queue_lease_interval,  # read by daas.transport, not kombu
        # kombu's predefined_exchanges, made by daas.transport when a channel first needs them (their
        # ARNs need the account, which may take an STS call): with them kombu never creates a topic.
        "daas_topics": fanout_topics(settings),
        "daas_account": settings.account_id,
    }


SEND_BATCH = 10  # SQS's most messages per SendMessageBatch


def send_tasks(settings: Settings, task: str, calls: list[list], queue: str) -> None:
    """Send one Celery task message per argument list in `calls` to `queue`, ten to a
    SendMessageBatch call, each encoded exactly as kombu's SQS transport encodes what
    `apply_async` sends (the workers consume them as any other task). A batch's lister sends
    thousands of chunks: one SendMessage each would be ten times the calls. Raises on the first
    message SQS refuses (the caller resumes from its last checkpoint)."""
    from kombu.asynchronous.aws.sqs.message import AsyncMessage
    from kombu.serialization import dumps as serialize
    from kombu.utils.json import dumps

    from daas.celery_app import app

    url = aws.queue_url(settings, queue)
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        bodies = []
        for args in calls:
            message = app.amqp.as_task_v2(str(uuid.uuid4()), task, args=args)
            content_type, encoding, body = serialize(message.body, "json")
            prepared = channel.prepare_message(body, None, content_type, encoding, message.headers,
                                               {**message.properties, "delivery_mode": 2})
            channel._inplace_augment_message(prepared, "", queue)
            bodies.append(AsyncMessage().encode(dumps(prepared)) if channel.sqs_base64_encoding else dumps(prepared))
    sqs = aws.client("sqs", settings)
    for start in range(0, len(bodies), SEND_BATCH):
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start:start + SEND_BATCH])]
        failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed", [])
        if failed:
            raise RuntimeError(f"SQS refused {len(failed)} of {len(entries)} messages: {failed[0].get('Message')}")
