"""boto3 clients and the AWS resources the service needs (buckets, queues), for AWS or a local endpoint."""
from __future__ import annotations

import functools
import json

import boto3
from botocore.config import Config

from daas.config import Settings

# Enough pooled connections for the web tier's upload threads and concurrent /classify waits.
_CLIENT_CONFIG = Config(max_pool_connections=64, retries={"max_attempts": 4, "mode": "standard"})


# The process's part in the service (web, worker, controller), set by its entry point: it ends the
# user agent of every AWS call, so the endpoint's access log (or CloudTrail) tells who made each.
ROLE = ""


@functools.lru_cache(maxsize=None)
def _client(service: str, endpoint: str, region: str, role: str):
    config = _CLIENT_CONFIG.merge(Config(user_agent_extra=f"daas/{role}")) if role else _CLIENT_CONFIG
    return boto3.session.Session().client(service, endpoint_url=endpoint or None, region_name=region, config=config)


def client(service: str, settings: Settings):
    """A cached, thread-safe boto3 client for the settings' endpoint and region."""
    return _client(service, settings.aws_endpoint, settings.region, ROLE)


def queue_url(settings: Settings, name: str) -> str:
    return client("sqs", settings).get_queue_url(QueueName=name)["QueueUrl"]


def queue_depth(settings: Settings) -> dict[str, int]:
    """Messages waiting (visible) and being worked on or prefetched (in flight) on the classify queue."""
    attributes = client("sqs", settings).get_queue_attributes(
        QueueUrl=queue_url(settings, settings.queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return {"visible": int(attributes["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"])}


def ensure_resources(settings: Settings) -> None:
    """Create the buckets and queues if they are missing (idempotent; `python -m daas init`)."""
    s3 = client("s3", settings)
    for bucket in (settings.input_bucket, settings.output_bucket):
        kwargs = {} if settings.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": settings.region}}
        try:
            s3.create_bucket(Bucket=bucket, **kwargs)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    dlq_url = _queue(settings, settings.dead_letter_queue, {"MessageRetentionPeriod": str(14 * 24 * 3600)})
    dlq_arn = client("sqs", settings).get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # A message whose worker dies mid-task comes back after the visibility timeout (workers extend
    # it while they work); after max_receives deliveries SQS parks it in the dead-letter queue,
    # where the controller turns it into error results instead of retrying it forever.
    _queue(settings, settings.queue, {
        "VisibilityTimeout": str(settings.visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receives}),
    })
    _queue(settings, settings.control_queue, {"VisibilityTimeout": "60", "ReceiveMessageWaitTimeSeconds": "20"})


def _queue(settings: Settings, name: str, attributes: dict[str, str]) -> str:
    """Create a queue, or bring an existing one to `attributes` (SQS refuses to create a queue
    again with other attributes: after an upgrade that changed a default, say)."""
    sqs = client("sqs", settings)
    try:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except sqs.exceptions.QueueNameExists:
        url = queue_url(settings, name)
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        return url
