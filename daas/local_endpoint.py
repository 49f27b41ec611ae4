"""The local AWS endpoint: moto's AWS backends served by gunicorn (`python -m daas.local_endpoint -p PORT`).

moto's own server is werkzeug's development server, which closes every connection and says it is
not for production. Here moto's WSGI app runs in one gunicorn process (moto keeps its state in
memory: one process, many threads; long polls hold a thread each), with keep-alive connections
and an access log line per AWS call, which tells what each image costs in requests.

Two costs of moto's are taken away, neither changing an answer:
- For every request, moto's dispatcher lists its package folder (a listdir and ~150 isdir calls) to
  recognise service names. That listing cannot change while the server runs; computing it once took
  the endpoint's CPU per request down by about a sixth (see README, Performance).
- For every page of ListObjectsV2, moto copies, filters and sorts the whole bucket: 2.4 s a page in
  a bucket of 1,000,000 keys, 40 minutes for the pages of its listing (1 ms a page here). `index_listings`
  keeps each bucket's key names sorted (sorted again only after the bucket changed) and answers a
  page without a delimiter from them; pages with a delimiter stay moto's.
"""
from __future__ import annotations

import argparse
import bisect
import functools
import os

from moto import backends
from moto.s3.models import FakeDeleteMarker, FakeTableStorageBucket, S3Backend
from moto.s3.utils import _VersionedKeyStore
from moto.server import DomainDispatcherApplication, create_backend_app

from daas.serving import AWS_ACCESS_LOG_FORMAT, serve

_MODULES = frozenset(backends.list_of_moto_modules())
THREADS = 64  # every long poll (workers, controller, Flower, reply listeners) holds one


def _list_of_moto_modules() -> frozenset[str]:
    return _MODULES


# Every method by which moto changes the key names a bucket holds (models.py and utils.py, moto 5.2).
_MUTATIONS = ("__setitem__", "__delitem__", "pop", "popitem", "setlist", "setdefault", "update", "clear")


def _counting_changes(mutate):
    @functools.wraps(mutate)
    def mutate_and_count(store, *args, **kwargs):
        try:
            return mutate(store, *args, **kwargs)
        finally:
            store.daas_changes = getattr(store, "daas_changes", 0) + 1
    return mutate_and_count


def _sorted_names(store: _VersionedKeyStore) -> list[str]:
    """The bucket's key names in order, sorted again only if the bucket changed since the last
    time. The count is read before the names: a change while sorting makes the next page sort again."""
    changes = getattr(store, "daas_changes", 0)
    cached = getattr(store, "daas_sorted", None)
    if cached is None or cached[0] != changes:
        cached = (changes, sorted(list(dict.keys(store))))  # list(): a copy taken at once, under the GIL
        store.daas_sorted = cached
    return cached[1]


def _list_objects_v2(self: S3Backend, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
    """moto's S3Backend.list_objects_v2 with the same answers, in time of the page rather than of the
    bucket where there is no delimiter."""
    if delimiter or isinstance(bucket, FakeTableStorageBucket):
        return _moto_list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
    names, prefix = _sorted_names(bucket.keys), prefix or ""
    after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
    index = max(bisect.bisect_left(names, prefix), bisect.bisect_right(names, after) if after else 0)
    page = []
    while index < len(names) and len(page) <= max_keys and names[index].startswith(prefix):
        key = bucket.keys.get(names[index])
        if key is not None and not isinstance(key, FakeDeleteMarker):
            page.append(key)
        index += 1
    return self._truncate_result(page, max_keys)  # one more than max_keys read: truncated or not


_moto_list_objects_v2 = S3Backend.list_objects_v2


def index_listings() -> None:
    """Answer ListObjectsV2 from a sorted index of each bucket's names (see the module's docstring)."""
    if S3Backend.list_objects_v2 is _list_objects_v2:
        return
    for name in _MUTATIONS:
        setattr(_VersionedKeyStore, name, _counting_changes(getattr(_VersionedKeyStore, name)))
    S3Backend.list_objects_v2 = _list_objects_v2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m daas.local_endpoint")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds queue URLs from it
    backends.list_of_moto_modules = _list_of_moto_modules  # looked up as an attribute per request
    index_listings()
    serve(DomainDispatcherApplication(create_backend_app), args.host, args.port, workers=1, threads=THREADS,
          timeout=60, name="daas-aws", access_log_format=AWS_ACCESS_LOG_FORMAT, drop_requests_on_quit=True)


if __name__ == "__main__":
    main()
