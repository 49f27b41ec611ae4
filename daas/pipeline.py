"""What a worker does with a chunk of images: fetch them, decode them, classify them.

Every image gets a result document: its label, or an error a person can read (a damaged file, an
upload no longer in the input bucket). Only a failure of the whole chunk (storage unreachable, a bug
in the model) raises, and the task then leaves its message to SQS (see daas.tasks.classify).
"""
from __future__ import annotations

import logging
import socket
import time

from botocore.exceptions import ClientError

from daas import config, images, results, storage
from daas.aws import client

log = logging.getLogger(__name__)
_classifier = None


def classifier():
    """The process's model, loaded on first use (normally at process start, see daas.lifecycle)."""
    global _classifier
    if _classifier is None:
        from daas.classifier import Classifier, configure_process

        configure_process()
        _classifier = Classifier(config.load())
    return _classifier


class Unreadable(Exception):
    """An image that cannot be fetched; the message says why, for its error result."""


class ImageGone(Unreadable):
    """The uploaded image is not in the input bucket (deleted, or expired by a lifecycle rule)."""


GONE = "the uploaded image is no longer in the input bucket; please upload it again"
MISSING = frozenset({"NoSuchKey", "404"})  # S3's answer to a caller with s3:ListBucket on the bucket
DENIED = frozenset({"AccessDenied", "403"})  # ... and to one without (and to one without s3:GetObject)


def gone_images(codes: list[str | None]) -> list[bool] | None:
    """Which images of a chunk are gone from the input bucket, from the error code of each one's
    GetObject (None: fetched); None when the whole chunk must fail, to be tried again.

    S3 answers a missing key with 404 only to a caller allowed s3:ListBucket on the bucket, else
    with 403 (issue 16: the chunk failed three times, and its good images got "storage unavailable"
    errors). A 403 while other images of the same chunk were fetched means those keys are gone; a
    403 for every image (no image fetched) is a real permission problem, and any other error is
    storage trouble: the chunk fails then, and SQS delivers it again.
    """
    if any(code is not None and code not in MISSING | DENIED for code in codes):
        return None
    if any(code in DENIED for code in codes) and None not in codes:
        return None
    return [code is not None for code in codes]


def classify_chunk(cfg: config.Settings, job_id: str, chunk: list[list[str]], batch: int = 0,
                   pack: list | None = None) -> list[dict]:
    """The result document of each image of a chunk ([image_id, name] pairs), in order, read from
    the object `pack` names (see daas.tasks.classify) or, without it, from one object per image.

    The chunk's images are fetched first (one GET for a pack; else back to back: an S3 GET cost a
    worker 2.1 ms of CPU so, against 2.4-2.5 ms between two forward passes, botocore's code staying
    in the CPU's caches), then decoded and classified `batch` at a time: by default one at a time
    on CPU (measured: batch 1 is the fastest per image there), and the whole chunk in one forward
    pass on a GPU, where batching pays.
    """
    fetched = fetch_pack(cfg, job_id, pack) if pack else fetch_chunk(cfg, job_id, chunk)
    batch = batch or (len(chunk) if classifier().device == "cuda" else 1)
    return [result for start in range(0, len(chunk), batch)
            for result in classify_batch(cfg, job_id, chunk[start:start + batch], fetched[start:start + batch])]


def fetch_pack(cfg: config.Settings, job_id: str, pack: list) -> list[tuple[bytes | ImageGone, float]]:
    """Each image of a pack ([first image id, [offset, size] of each]) and its share of the GET's
    milliseconds. One GET for the chunk: a worker's GET cost about 1 ms of CPU whatever its size
    (measured here: 1.06 ms for one 230 kB image, 2.2 ms for ten of them in one object). A pack no
    longer there (404, see gone_images) is every image gone; S3's other errors raise: the chunk is
    tried again."""
    first, spans = pack
    data, ms = fetch(cfg, storage.pack_key(job_id, first))
    if isinstance(data, ClientError):
        if gone_images([data.response["Error"]["Code"]]) is None:
            raise data
        return [(ImageGone(GONE), 0.0) for _ in spans]
    return [(data[start:start + size] if start + size <= len(data) else ImageGone(GONE), ms / len(spans))
            for start, size in spans]


def fetch_chunk(cfg: config.Settings, job_id: str, chunk: list[list[str]]) -> list[tuple[bytes | ImageGone, float]]:
    """Each image's bytes (or ImageGone) and the milliseconds it took to get them; raises S3's error
    when the whole chunk must be tried again (see gone_images)."""
    fetched = [fetch(cfg, storage.image_key(job_id, image_id)) for image_id, _ in chunk]
    codes = [data.response["Error"]["Code"] if isinstance(data, ClientError) else None for data, _ in fetched]
    gone = gone_images(codes)
    if gone is None:
        raise next(data for data, _ in fetched if isinstance(data, ClientError))
    if DENIED & set(codes):
        log.warning("job %s: S3 refused %d of %d images of a chunk (403) and served the others: taken as gone "
                    "(S3 answers a missing key with 403 to a worker without s3:ListBucket on the input bucket)",
                    job_id, sum(code in DENIED for code in codes), len(chunk))
    return [(ImageGone(GONE) if lost else data, ms) for lost, (data, ms) in zip(gone, fetched)]


def fetch(cfg: config.Settings, key: str) -> tuple[bytes | ClientError, float]:
    """An object of the input bucket (or S3's 404 or 403 for it, see gone_images), and the
    milliseconds it took to get it."""
    started = time.perf_counter()
    try:
        data = storage.get_image(cfg, key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in MISSING | DENIED:
            raise  # storage trouble: the whole chunk is tried again, without fetching the rest
        data = exc
    return data, (time.perf_counter() - started) * 1000


def fetch_object(cfg: config.Settings, bucket: str, key: str) -> tuple[bytes | Unreadable, float]:
    """A batch's image from its source bucket (or why it cannot be read), and the milliseconds it
    took. A missing or forbidden object, or one over DAAS_MAX_IMAGE_BYTES, is that image's error:
    trying the chunk again would change nothing. Other errors (storage trouble) raise."""
    started = time.perf_counter()
    try:
        response = client("s3", cfg).get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in MISSING:
            return Unreadable(f"s3://{bucket}/{key} is no longer in the bucket"), 0.0
        if code in DENIED:
            return Unreadable(f"the service may not read s3://{bucket}/{key} (403: check the bucket's policy "
                              "and DAAS_BATCH_SOURCES)"), 0.0
        raise
    if response["ContentLength"] > cfg.max_image_bytes:
        response["Body"].close()
        return Unreadable(f"the object is {response['ContentLength'] / config.MB:.1f} MB; the limit is "
                          f"{cfg.max_image_bytes / config.MB:.0f} MB per image (DAAS_MAX_IMAGE_BYTES)"), 0.0
    return response["Body"].read(), (time.perf_counter() - started) * 1000


def classify_objects(cfg: config.Settings, bucket: str, keys: list[str], batch: int = 0) -> list[dict]:
    """The result document of each key of a batch's chunk, in order (`name` is the key); as
    classify_chunk, one image at a time on CPU, the chunk in one pass on a GPU."""
    fetched = [fetch_object(cfg, bucket, key) for key in keys]
    pairs = [[f"{n:032x}", key] for n, key in enumerate(keys)]
    batch = batch or (len(keys) if classifier().device == "cuda" else 1)
    return [result for start in range(0, len(keys), batch)
            for result in classify_batch(cfg, "", pairs[start:start + batch], fetched[start:start + batch])]


def decode(cfg: config.Settings, data: bytes | Unreadable):
    """The decoded image, or the message of why it cannot be classified."""
    if isinstance(data, Unreadable):
        return str(data)
    try:
        return images.decode(data, cfg.max_image_pixels, draft_size=images.WORKER_DRAFT_SIZE)
    except images.BadImage as exc:
        return str(exc)
    except Exception as exc:  # a file that trips the decoder itself: that image fails, not the chunk
        log.warning("decoding an image failed unexpectedly: %r", exc)
        return f"the image could not be decoded ({type(exc).__name__}); is it a valid image file?"


def classify_batch(cfg: config.Settings, job_id: str, batch: list[list[str]],
                   fetched: list[tuple[bytes | ImageGone, float]]) -> list[dict]:
    """Decode each fetched image and classify the decodable ones in one forward pass: a result for
    each (an error result for bad input). Each result carries its own fetch and decode times and
    its share of the forward pass."""
    model, documents, decoded = classifier(), {}, []  # decoded: (image_id, name, image, timings)
    for (image_id, name), (data, fetch_ms) in zip(batch, fetched):
        started = time.perf_counter()
        image = decode(cfg, data)
        if isinstance(image, str):
            documents[image_id] = results.error(job_id, image_id, name, image)
            continue
        decoded.append((image_id, name, image, {"fetch": fetch_ms, "decode": (time.perf_counter() - started) * 1000}))
    if decoded:
        started = time.perf_counter()
        predictions = model.classify([image for _, _, image, _ in decoded])
        share = (time.perf_counter() - started) * 1000 / len(decoded)
        for (image_id, name, _, timings), prediction in zip(decoded, predictions):
            documents[image_id] = results.done(job_id, image_id, name, prediction, model.name,
                                               socket.gethostname(), {**timings, "forward": share})
    return [documents[image_id] for image_id, _ in batch]
