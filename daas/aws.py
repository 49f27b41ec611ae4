"""boto3 clients and the AWS resources the service needs (buckets, queues), for AWS or a local endpoint."""
from __future__ import annotations

import functools
import json

import boto3
from botocore.config import Config

from daas.config import Settings

# Enough pooled connections for the web tier's upload threads and concurrent /classify waits.
_CLIENT_CONFIG = Config(max_pool_connections=64, retries={"max_attempts": 4, "mode": "standard"})


@functools.lru_cache(maxsize=None)
def _client(service: str, endpoint: str, region: str):
    return boto3.session.Session().client(
        service, endpoint_url=endpoint or None, region_name=region, config=_CLIENT_CONFIG)


def client(service: str, settings: Settings):
    """A cached, thread-safe boto3 client for the settings' endpoint and region."""
    return _client(service, settings.aws_endpoint, settings.region)


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
    sqs = client("sqs", settings)
    dlq_url = sqs.create_queue(QueueName=settings.dead_letter_queue,
                               Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # A message whose worker dies mid-task comes back after the visibility timeout; after
    # max_receives deliveries SQS parks it in the dead-letter queue, where the controller
    # turns it into an error result instead of retrying it forever.
    sqs.create_queue(QueueName=settings.queue, Attributes={
        "VisibilityTimeout": str(settings.visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receives}),
    })
    sqs.create_queue(QueueName=settings.control_queue, Attributes={
        "VisibilityTimeout": "60", "ReceiveMessageWaitTimeSeconds": "20"})
