"""boto3 clients and the AWS resources the service needs (buckets, queues), for AWS or a local endpoint."""
from __future__ import annotations

import functools
import json

import boto3
from botocore.config import Config

from daas.config import DUTY_TIMEOUT_MAX, DUTY_TIMEOUT_MIN, Settings

# Enough pooled connections for the web tier's upload threads and concurrent /classify waits.
_CLIENT_CONFIG = Config(max_pool_connections=64, retries={"max_attempts": 4, "mode": "standard"})


# The process's part in the service (web, worker, controller), set by its entry point: it ends the
# user agent of every AWS call, so the endpoint's access log (or CloudTrail) tells who made each.
ROLE = ""


@functools.lru_cache(maxsize=None)
def _client(service: str, endpoint: str, region: str, role: str):
    config = _CLIENT_CONFIG.merge(Config(user_agent_extra=f"daas/{role}")) if role else _CLIENT_CONFIG
    return boto3.session.Session().client(service, endpoint_url=endpoint or None, region_name=region, config=config)


def check_queue(settings: Settings) -> None:
    """Raise botocore's error (no credentials, no endpoint, no queue) unless the classify queue can
    be found, with a client of its own: a server calls this before it forks its workers, and the
    cached clients of `client` must not be shared across a fork (their pooled connections)."""
    sqs = _client.__wrapped__("sqs", settings.aws_endpoint, settings.region, ROLE)
    try:
        sqs.get_queue_url(QueueName=settings.queue)
    finally:
        sqs.close()


def error_message(exc) -> str:
    """AWS's own words for a refused call (a botocore ClientError), for a person to read."""
    return exc.response.get("Error", {}).get("Message") or str(exc)


def client(service: str, settings: Settings):
    """A cached, thread-safe boto3 client for the settings' endpoint and region."""
    return _client(service, settings.aws_endpoint, settings.region, ROLE)


# A worker's duties (its heartbeat PUT, ChangeMessageVisibilityBatch for the messages it holds) run
# on a schedule beside its task, and a call of theirs is worth nothing once the next round is due.
# With botocore's defaults (60 s to connect, 60 s per read, 4 attempts) one stalled heartbeat PUT
# held the worker's duties long enough for a held message to reappear for a second worker, which ran
# the task again, and for the controller to end the worker as dead (issue 16). So duty calls give up
# within one round: connect and read each within half a round, one attempt (a retry would come no
# sooner than the next round), between DUTY_TIMEOUT_MIN and _MAX. The floor spares short rounds (test settings)
# spurious timeouts: the local endpoint took at most 8 ms on these calls during the delivery tests
# (its access log); the ceiling is far above what S3 and SQS take for a request this small.


def duty_timeout(every: float) -> float:
    """Connect and read timeout (seconds) of the calls of a duty done every `every` seconds: one
    attempt (a connect and a read) fits in a round, for rounds of 2 to 10 s."""
    return min(DUTY_TIMEOUT_MAX, max(DUTY_TIMEOUT_MIN, every / 2))


@functools.lru_cache(maxsize=None)
def _duty_client(service: str, endpoint: str, region: str, role: str, timeout: float):
    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    user_agent_extra=f"daas/{role}" if role else None)
    return boto3.session.Session().client(service, endpoint_url=endpoint or None, region_name=region, config=config)


def duty_client(service: str, settings: Settings, every: float):
    """A cached, thread-safe boto3 client whose calls give up within a round of a duty done every
    `every` seconds (see duty_timeout): for calls that a later round redoes."""
    return _duty_client(service, settings.aws_endpoint, settings.region, ROLE, duty_timeout(every))


def partition(region: str) -> str:
    """The ARN partition of a region (aws, aws-cn, aws-us-gov)."""
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


@functools.lru_cache(maxsize=None)
def _caller(endpoint: str, region: str) -> dict:
    return _client("sts", endpoint, region, ROLE).get_caller_identity()


def account_id(settings: Settings) -> str:
    """The stack's account: DAAS_ACCOUNT_ID (set on a deployed stack's hosts), else asked of STS
    once per process (GetCallerIdentity needs no permission)."""
    return settings.account_id or _caller(settings.aws_endpoint, settings.region)["Account"]


def caller_id(settings: Settings) -> str:
    """This process's principal as IAM's policy variable aws:userid names it: `<role id>:<instance id>`
    for an instance role (asked of STS once per process)."""
    return _caller(settings.aws_endpoint, settings.region)["UserId"]


def topic_names(settings: Settings) -> list[str]:
    """The SNS topics of the stack's events and remote control (see daas.broker.fanout_topics)."""
    return [f"{settings.stack}-events", f"{settings.stack}-pidbox"]


def topic_arn(settings: Settings, name: str) -> str:
    return f"arn:{partition(settings.region)}:sns:{settings.region}:{account_id(settings)}:{name}"


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
    """Create the buckets, queues and topics if they are missing (idempotent; `python -m daas init`).
    A deployed stack has them from CloudFormation (daas/cloudformation.yaml), with the same names
    and attributes; its processes create none."""
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
    # Events and remote control fan out through these. They exist before any process starts, so
    # that no process creates or tags a topic (AWS limits tagging calls to 10 a second per account:
    # a fleet booting at once would be throttled), see daas.broker.transport_options.
    sns = client("sns", settings)
    for name in topic_names(settings):
        sns.create_topic(Name=name)  # idempotent: an existing topic's ARN
    _rate_limit_table(settings)


def _rate_limit_table(settings: Settings) -> None:
    """The rate limit's buckets (daas.ratelimit): on demand, full buckets deleted by TTL."""
    dynamodb = client("dynamodb", settings)
    try:
        dynamodb.create_table(TableName=settings.rate_limit_table, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "client", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "client", "KeyType": "HASH"}])
    except dynamodb.exceptions.ResourceInUseException:
        return
    dynamodb.get_waiter("table_exists").wait(TableName=settings.rate_limit_table)
    dynamodb.update_time_to_live(TableName=settings.rate_limit_table,
                                 TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})


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
