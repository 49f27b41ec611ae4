"""The rate limit of the web tier (DAAS_RATE_LIMIT images per minute per client): token buckets.

One bucket per client (an API key, or the client's address when the service is open), holding at
most a minute's worth of images and refilled continuously. The buckets live in a DynamoDB table,
`<stack>-ratelimit`, so that every web process of every web host spends from the same one (issue 17:
buckets on each host's disk gave N web hosts N times the limit). A check is a consistent read and,
when images are allowed, a write conditional on the item's version, which fails if another process
spent meanwhile (then the check is redone). A full bucket is the same as no bucket, so each item carries the time it is
full again, and the table's TTL deletes it after that: the table holds the clients of about the
last minute, not every client ever seen.
"""
from __future__ import annotations

import hashlib
import math
import time

from daas import aws
from daas.config import RATE_LIMIT_CONTENDED_WAIT, Settings

ATTEMPTS = 8  # conditional writes lost to other web processes before a request is told to retry


def refill(tokens: float, at: float, now: float, per_minute: int) -> float:
    """The bucket's tokens at `now`, `at` being when it held `tokens`."""
    return min(float(per_minute), tokens + (now - at) * per_minute / 60)


def decide(tokens: float, images: int, per_minute: int) -> tuple[float, float]:
    """(tokens left, seconds to wait): spend `images` tokens if there are enough, else wait 0 < s."""
    if images <= tokens:
        return tokens - images, 0.0
    if images > per_minute:
        return tokens, math.inf  # never fits in a minute's allowance
    return tokens, (images - tokens) * 60 / per_minute


def full_again(tokens: float, now: float, per_minute: int) -> float:
    """When a bucket holding `tokens` at `now` is full again: from then on it is as good as gone."""
    return now + (per_minute - tokens) * 60 / per_minute


class RateLimiter:
    def __init__(self, settings: Settings, per_minute: int):
        self.settings, self.per_minute, self.table = settings, per_minute, settings.rate_limit_table

    def take(self, client: str, images: int, now: float | None = None) -> float:
        """Spend `images` from the client's bucket: 0 if allowed, else the seconds until they fit
        (math.inf if they never do). Nothing is spent unless it returns 0."""
        now = time.time() if now is None else now
        dynamodb, name = aws.client("dynamodb", self.settings), _name(client)
        for _ in range(ATTEMPTS):
            item = self._item(name)
            tokens, wait = decide(self._tokens(item, now), images, self.per_minute)
            if wait:
                return wait
            # Optimistic: the write holds only if no other process wrote since the read (a version
            # number, not the time: two writes in one clock tick would compare equal).
            version = int(item["version"]["N"]) if item else 0
            condition = ({"ConditionExpression": "attribute_not_exists(client)"} if item is None else
                         {"ConditionExpression": "version = :v", "ExpressionAttributeValues": {":v": item["version"]}})
            try:
                dynamodb.put_item(TableName=self.table, Item={
                    "client": {"S": name}, "tokens": {"N": repr(tokens)}, "at": {"N": repr(now)},
                    "version": {"N": str(version + 1)},
                    "expires": {"N": str(math.ceil(full_again(tokens, now, self.per_minute)))}}, **condition)
                return 0.0
            except dynamodb.exceptions.ConditionalCheckFailedException:
                continue  # another web process spent from this bucket meanwhile: look again
        return RATE_LIMIT_CONTENDED_WAIT

    def wait(self, client: str, images: int = 1, now: float | None = None) -> float:
        """Seconds until `images` would fit in the client's bucket (0: now), spending nothing: the web
        tier asks this before it reads an upload, so a caller over its limit costs no disk."""
        now = time.time() if now is None else now
        return decide(self._tokens(self._item(_name(client)), now), images, self.per_minute)[1]

    def _item(self, name: str) -> dict | None:
        return aws.client("dynamodb", self.settings).get_item(
            TableName=self.table, Key={"client": {"S": name}}, ConsistentRead=True).get("Item")

    def _tokens(self, item: dict | None, now: float) -> float:
        if item is None or float(item["expires"]["N"]) <= now:  # none, or full again (TTL is lazy)
            return float(self.per_minute)
        return refill(float(item["tokens"]["N"]), float(item["at"]["N"]), now, self.per_minute)


def _name(client: str) -> str:
    return hashlib.sha256(client.encode()).hexdigest()[:32]  # keys are never stored
