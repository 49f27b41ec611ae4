"""daas.ratelimit's table stays bounded: a bucket that has refilled completely is the same as no
bucket, so its row is deleted (README: nothing grows without bound). Time is the `now` argument."""
import sqlite3

from daas import ratelimit


def rows(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {name for (name,) in db.execute("SELECT client FROM buckets")}


def test_full_buckets_are_deleted_at_most_once_a_minute_and_deleting_them_changes_nothing(tmp_path):
    path = tmp_path / "limit.sqlite"
    limiter = ratelimit.RateLimiter(path, per_minute=60)  # one token a second
    assert limiter.take("emptied", 60, now=1000) == 0
    assert limiter.take("once", 1, now=1000) == 0
    assert len(rows(path)) == 2
    # At 1030 "once" is full again, but the last deletion (at 1000) was less than a minute ago...
    assert limiter.take("recent", 50, now=1030) == 0
    assert len(rows(path)) == 3
    # ...a minute after it, the full ones go (61 s after 1000); buckets still refilling stay.
    assert limiter.take("late", 1, now=1061) == 0
    assert rows(path) == {ratelimit._name("recent"), ratelimit._name("late")}
    # A deleted bucket is a full one: a minute's allowance at once, then the limit again.
    assert limiter.take("emptied", 60, now=1062) == 0
    assert limiter.take("emptied", 1, now=1062) == 1.0
    # Nothing half-used is lost: "recent" kept 10 at 1030 and has refilled 32 more by 1062.
    assert limiter.wait("recent", 60, now=1062) == 18.0


def test_many_one_off_clients_leave_only_the_last_minutes_rows(tmp_path):
    path = tmp_path / "limit.sqlite"
    limiter = ratelimit.RateLimiter(path, per_minute=10)
    for second in range(600):  # a new client address every second for ten minutes
        limiter.take(f"address:198.51.100.{second}", 1, now=second)
    assert len(rows(path)) <= 60 + 6  # about a minute's worth (deleted when full: 6 s after, a minute apart)
