"""The two buckets: uploaded images in the input bucket, their results in the output bucket.

Keys are generated ids, never user file names. The input bucket holds each image at
`<job_id>/<image_id>`. The output bucket holds the results of each task (a chunk of a job's images)
as one JSON list of result documents at `<job_id>/<first image_id of the chunk>`, so a single
image's result is at its own image key; and the job's manifest (its image ids and file names) at
`jobs/<job_id>.json`. One object per task, not per image: an S3 PUT cost a worker about 2 ms of CPU,
6% of an image's time (see README, Performance). The output bucket is the service's result store;
Celery's own result backend is not used.
"""
from __future__ import annotations

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


def put_image(settings: Settings, key: str, data: bytes | IO[bytes], name: str) -> None:
    """Store an uploaded image; a file is streamed from its start, never read into memory whole."""
    if not isinstance(data, bytes):
        data.seek(0)
    # The user's file name travels as metadata only; S3 metadata must be ASCII.
    client("s3", settings).put_object(Bucket=settings.input_bucket, Key=key, Body=data,
                                      Metadata={"name": name.encode("ascii", "backslashreplace").decode()})


def get_image(settings: Settings, key: str) -> bytes:
    return client("s3", settings).get_object(Bucket=settings.input_bucket, Key=key)["Body"].read()


def put_json(settings: Settings, key: str, document: dict | list) -> None:
    client("s3", settings).put_object(Bucket=settings.output_bucket, Key=key,
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
