"""daas.ratelimit's buckets, in the stack's DynamoDB table on the local endpoint. Time is the `now`
argument. A bucket that has refilled completely is the same as no bucket: each item says when it is
full again, and the table's TTL deletes it after that (README: nothing grows without bound)."""
import threading

import pytest

from daas import aws, ratelimit
from tests.conftest import make_settings


def items(settings) -> dict[str, dict]:
    scanned = aws.client("dynamodb", settings).scan(TableName=settings.rate_limit_table)["Items"]
    return {item["client"]["S"]: item for item in scanned}


def test_buckets_refill_continuously_up_to_a_minute_of_images():
    assert ratelimit.refill(0, at=0, now=30, per_minute=60) == 30
    assert ratelimit.refill(50, at=0, now=600, per_minute=60) == 60
    assert ratelimit.decide(3, 2, 60) == (1, 0)
    assert ratelimit.decide(1, 3, 60) == (1, 2.0)  # two more tokens, one a second
    assert ratelimit.decide(60, 61, 60)[1] == float("inf")
    assert ratelimit.full_again(10, now=100, per_minute=60) == 150


def test_every_web_host_spends_from_the_same_bucket(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    # Two web hosts: two limiters with nothing in common but the table.
    first = ratelimit.RateLimiter(settings.with_(state_dir=tmp_path / "a"), 10)
    second = ratelimit.RateLimiter(settings.with_(state_dir=tmp_path / "b"), 10)
    assert first.take("key", 8, now=100) == 0
    assert second.take("key", 4, now=100) == pytest.approx(12.0)  # 2 left, 2 missing at 1 per 6 s
    assert second.wait("key", 4, now=112) == 0
    assert second.take("key", 4, now=112) == 0
    assert first.take("key", 1, now=112) == pytest.approx(6.0)


def test_concurrent_spending_never_overspends(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    limiter = ratelimit.RateLimiter(settings, 20)
    granted = []

    def spend():
        for _ in range(5):
            if limiter.take("busy", 1, now=500) == 0:
                granted.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]  # 40 tries at once for 20 tokens
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every token granted was spent once: none twice (overspending), none lost. (A try that lost
    # the race ATTEMPTS times is told to retry and spends nothing.)
    left = 20 - len(granted)
    assert left >= 0 and limiter.wait("busy", left, now=500) == 0 and limiter.wait("busy", left + 1, now=500) > 0


def test_a_bucket_says_when_it_is_full_again_and_then_counts_as_none(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    limiter = ratelimit.RateLimiter(settings, 60)  # one token a second
    assert limiter.take("once", 1, now=1000) == 0
    assert limiter.take("emptied", 60, now=1000) == 0
    stored = items(settings)
    assert {int(item["expires"]["N"]) for item in stored.values()} == {1001, 1060}
    assert "once" not in str(stored)  # keys and addresses are stored hashed
    ttl = aws.client("dynamodb", settings).describe_time_to_live(TableName=settings.rate_limit_table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires"
    # Past that time a bucket the TTL has not deleted yet is a full one: a minute's allowance at once.
    assert limiter.take("emptied", 60, now=1061) == 0
    assert limiter.take("emptied", 1, now=1061) == 1.0
