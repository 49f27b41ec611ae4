"""The local endpoint (daas.local_endpoint): its index of S3 listings answers exactly as moto does,
and it stops at once, open long polls or not."""
from __future__ import annotations

import random
import threading
import time

import pytest
from moto.s3.models import s3_backends

from daas import aws, config, local_endpoint
from daas.stack import Stack, free_port

ACCOUNT = "123456789012"


def names_and_flags(page):
    keys, truncated, token = page
    return [key.name for key in keys], truncated, token is not None


def walk(list_v2, backend, bucket, prefix, start_after, max_keys):
    """Every page of a listing, as (names, truncated, has a token)."""
    pages, token = [], None
    while len(pages) <= len(bucket.keys) + 1:  # a listing that does not advance fails, not hangs
        page = list_v2(backend, bucket, prefix, None, token, None if token else start_after, max_keys)
        pages.append(names_and_flags(page))
        token = page[2]
        if not token:
            return pages
    raise AssertionError(f"{len(pages)} pages and no end")


@pytest.fixture
def backend():
    local_endpoint.index_listings()
    s3 = s3_backends[ACCOUNT]["aws"]
    yield s3
    for name in list(s3.buckets):
        bucket = s3.buckets[name]
        for key in list(bucket.keys):
            s3.delete_object(name, key)
        s3.delete_bucket(name)


def fill(s3, bucket_name: str, count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    names = [f"{rng.choice(['a/', 'a/b/', 'b/', 'ab', ''])}{rng.randrange(10 ** 6):06d}{rng.choice(['', '.jpg', 'é'])}"
             for _ in range(count)]
    s3.create_bucket(bucket_name, "us-east-1")
    for name in names:
        s3.put_object(bucket_name, name, b"x")
    return sorted(set(names))


@pytest.mark.parametrize("prefix", [None, "", "a/", "a/b/", "ab", "b/0", "zz"])
@pytest.mark.parametrize("max_keys", [0, 1, 7, 1000])
def test_pages_match_motos(backend, prefix, max_keys):
    names = fill(backend, "listing-equal", 300)
    bucket = backend.get_bucket("listing-equal")
    for start_after in (None, names[0], names[150], "a/5", "zzz"):
        ours = walk(local_endpoint._list_objects_v2, backend, bucket, prefix, start_after, max_keys)
        motos = walk(local_endpoint._moto_list_objects_v2, backend, bucket, prefix, start_after, max_keys)
        assert ours == motos
        if max_keys:
            listed = [name for page, _, _ in ours for name in page]
            assert listed == [n for n in names if n.startswith(prefix or "") and (not start_after or n > start_after)]


def test_a_bucket_changed_between_pages_is_listed_as_it_is_now(backend):
    names = fill(backend, "listing-changes", 100)
    bucket = backend.get_bucket("listing-changes")
    first = local_endpoint._list_objects_v2(backend, bucket, "", None, None, None, 10)
    token = first[2]
    backend.delete_object("listing-changes", names[50])           # gone before its page
    backend.put_object("listing-changes", names[60] + "-new", b"y")  # new, after the first page
    backend.put_object("listing-changes", "000-before", b"y")       # new, before it: not listed now
    rest = []
    while token:
        ours = local_endpoint._list_objects_v2(backend, bucket, "", None, token, None, 10)
        motos = local_endpoint._moto_list_objects_v2(backend, bucket, "", None, token, None, 10)
        assert names_and_flags(ours) == names_and_flags(motos)
        rest += [key.name for key in ours[0]]
        token = ours[2]
    expected = sorted(set(names[10:]) - {names[50]} | {names[60] + "-new"})
    assert rest == expected


def test_delete_markers_of_a_versioned_bucket_are_not_listed(backend):
    names = fill(backend, "listing-versions", 40)
    backend.put_bucket_versioning("listing-versions", "Enabled")
    for name in names[::3]:
        backend.delete_object("listing-versions", name)  # versioned: leaves a delete marker
    bucket = backend.get_bucket("listing-versions")
    ours = walk(local_endpoint._list_objects_v2, backend, bucket, "", None, 5)
    assert ours == walk(local_endpoint._moto_list_objects_v2, backend, bucket, "", None, 5)
    assert [name for page, _, _ in ours for name in page] == [n for i, n in enumerate(names) if i % 3]


def test_an_endpoint_with_open_long_polls_stops_at_once(tmp_path):
    """Stack.stop's SIGINT ends the endpoint without waiting for the long polls in hand (as SQS, it
    keeps a poll open after its client is gone): every stop of it took 10 s, until Stack.stop
    killed it (daas.serving.exit_at_once)."""
    stack = Stack(config.Settings(aws_port=free_port(), state_dir=tmp_path), log_dir=tmp_path)
    stack.start_local_aws()
    endpoint = stack.endpoint
    sqs = aws.client("sqs", stack.settings)
    queue = sqs.create_queue(QueueName="polled")["QueueUrl"]
    polls = [threading.Thread(target=_poll, args=(sqs, queue), daemon=True) for _ in range(3)]
    for poll in polls:
        poll.start()
    time.sleep(1)
    assert all(poll.is_alive() for poll in polls)  # the polls are open
    started = time.monotonic()
    stack.stop()
    assert time.monotonic() - started < 3 and endpoint.returncode == 0  # not killed after 10 s


def _poll(sqs, queue: str) -> None:
    try:
        sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=20)
    except Exception:  # the endpoint went away: what this test does
        pass
