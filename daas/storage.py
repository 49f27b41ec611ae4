"""The two buckets: uploaded images in the input bucket, their results in the output bucket.

Keys are generated ids, never user file names. The input bucket holds the images of each task (a
chunk of a job's images) one after another in one object, `<job_id>/<first image_id>.pack`; the
task's message says where each image lies in it. One object per task, not per image: a worker's S3
GET cost about 1 ms of CPU, a tenth of an image's time on OpenVINO, and a chunk's ten images came
back in one GET for about 2 ms; S3 bills the web tier's PUTs per request too (see README,
Performance). (Releases before packed nothing: their messages name no object, and each image is
read from `<job_id>/<image_id>`.) The output bucket holds the results of each task as one JSON
list of result documents at `<job_id>/<first image_id of the chunk>`, so a single
image's result is at its own image key; and the job's manifest (its image ids and file names) at
`jobs/<job_id>.json`. One object per task, not per image: an S3 PUT cost a worker about 2 ms of CPU,
6% of an image's time (see README, Performance). The output bucket is the service's result store;
Celery's own result backend is not used.
"""
from __future__ import annotations

import bisect
import io
import itertools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from daas.aws import client
from daas.config import Settings


def warm_up(settings: Settings) -> None:
    """Build the S3 client now: botocore parses its service model then (about 60 ms of CPU),
    which a worker would otherwise pay in its first task."""
    client("s3", settings)


ID = re.compile(r"[0-9a-f]{32}")  # job and image ids (uuid4 hex, see daas.jobs.new_id)


def is_id(value: object) -> bool:
    """Whether `value` is a generated id: the only thing ever put into a key (never `jobs`,
    `workers`, a path or a user's file name)."""
    return isinstance(value, str) and bool(ID.fullmatch(value))


def image_key(job_id: str, image_id: str) -> str:
    return f"{job_id}/{image_id}"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


PACK_SUFFIX = ".pack"


def pack_key(job_id: str, first_image_id: str) -> str:
    """Where the images of one task are stored, one after another: under its first image."""
    return f"{job_id}/{first_image_id}{PACK_SUFFIX}"


def size_of(data: bytes | IO[bytes]) -> int:
    """The size of an upload, in memory or in a file; raises (ValueError, OSError) for a file that
    can no longer be read."""
    if isinstance(data, bytes):
        return len(data)
    return data.seek(0, io.SEEK_END)


class Joined(io.RawIOBase):
    """Uploads read one after another as one file, none of them copied into memory: the body of
    a pack's PUT (botocore reads it, seeks back, and reads it again to send it)."""

    def __init__(self, parts: list[bytes | IO[bytes]], sizes: list[int]):
        self._parts = [io.BytesIO(part) if isinstance(part, bytes) else part for part in parts]
        self._starts = list(itertools.accumulate(sizes, initial=0))
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._starts[-1]}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        """Fill `buffer` from as many parts as it spans (a short read only at the end)."""
        filled = 0
        while filled < len(buffer) and self._position < self._starts[-1]:
            index = bisect.bisect_right(self._starts, self._position) - 1
            part = self._parts[index]
            part.seek(self._position - self._starts[index])
            data = part.read(min(len(buffer) - filled, self._starts[index + 1] - self._position))
            if not data:
                raise OSError("an upload ended before its size: it changed while being stored")
            buffer[filled:filled + len(data)] = data
            filled += len(data)
            self._position += len(data)
        return filled


def put_pack(settings: Settings, key: str, parts: list[bytes | IO[bytes]], sizes: list[int]) -> None:
    """Store the uploads of one task as one object, one after another (`sizes`: of each, from
    size_of); files are streamed, never read into memory whole."""
    client("s3", settings).put_object(Bucket=settings.input_bucket, Key=key, Body=Joined(parts, sizes),
                                      ContentLength=sum(sizes))


def get_image(settings: Settings, key: str) -> bytes:
    """An object of the input bucket: a pack, or one image stored by a release before packs."""
    return client("s3", settings).get_object(Bucket=settings.input_bucket, Key=key)["Body"].read()


def put_json(settings: Settings, key: str, document: dict | list, s3=None) -> None:
    """Write a JSON document to the output bucket (with `s3`, a client of the caller's choosing)."""
    (s3 or client("s3", settings)).put_object(Bucket=settings.output_bucket, Key=key,
                                              Body=json.dumps(document).encode(), ContentType="application/json")


def get_json(settings: Settings, key: str, s3=None) -> dict | list | None:
    """A JSON document of the output bucket, None if there is none (with `s3`, a client of the
    caller's choosing)."""
    s3 = s3 or client("s3", settings)
    try:
        return json.loads(s3.get_object(Bucket=settings.output_bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


RESULTS = "results/"  # workers may write only here and their heartbeat records (daas/cloudformation.yaml)


def results_key(job_id: str, first_image_id: str) -> str:
    """Where the results of a chunk are stored: under its first image (an image sent alone is its
    own chunk)."""
    return f"{RESULTS}{image_key(job_id, first_image_id)}"


def put_results(settings: Settings, job_id: str, results: list[dict]) -> None:
    """Store the results of a chunk's images, in order, in one object (written once: a chunk has
    all its results or none)."""
    put_json(settings, results_key(job_id, results[0]["id"]), results)


def get_results(settings: Settings, key: str) -> list[dict] | None:
    return get_json(settings, key)


def put_manifest(settings: Settings, manifest: dict) -> None:
    put_json(settings, manifest_key(manifest["job_id"]), manifest)


def get_manifest(settings: Settings, job_id: str) -> dict | None:
    return get_json(settings, manifest_key(job_id))


def finished_keys(settings: Settings, job_id: str) -> set[str]:
    """Keys of the result lists written so far for a job (one listing call per 1000 tasks)."""
    paginator = client("s3", settings).get_paginator("list_objects_v2")
    return {obj["Key"] for page in paginator.paginate(Bucket=settings.output_bucket, Prefix=f"{RESULTS}{job_id}/")
            for obj in page.get("Contents", [])}


def get_many_results(settings: Settings, keys: list[str]) -> dict[str, list[dict]]:
    """The result lists at `keys`, fetched in parallel."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = zip(keys, pool.map(lambda key: get_results(settings, key), keys))
        return {key: results for key, results in found if results is not None}
