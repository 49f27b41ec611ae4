"""`python -m daas bench batch`: batch jobs at scale on the local endpoint (issue 20).

1. A source bucket of IMAGES small JPEGs (made here, 48×48 to 160×160 pixels), then a batch over it
   on a stack with WORKERS_PER_CORE workers per core: the listing and enqueue rate (images enqueued
   per second until the listing completes), end-to-end images/s (creation to the last marker), and
   JOBS_SAMPLE of the same images through `POST /api/jobs` on the same stack for comparison.
2. The lister alone, in a process of its own (its peak resident memory): over the IMAGES keys and
   over LISTING_KEYS tiny objects, its queue drained by threads here as workers would (moto's SQS
   scans the whole queue for every call: an undrained queue of 10,000 messages made the 100,000-key
   listing take 19 minutes). Its memory must not grow with the count: it lists the first 100,000 of
   LISTING_KEYS, then all of them. (moto itself sorted the whole bucket for every page of a listing;
   the local endpoint answers pages from an index, see daas.local_endpoint.)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

from daas import aws, config
from daas.bench.harness import WORKERS_PER_CORE, machine, workspace
from daas.bench.measure import classify_all
from daas.bench.stacks import local_aws, stack, start_workers
from daas.stack import PYTHON, child_env

IMAGES = 20_000
LISTING_KEYS = 1_000_000
LISTING_SAMPLE = 100_000  # the first keys of the listing, listed on their own too
JOBS_SAMPLE = 2_000
PUT_THREADS = 32
PUT_SLICE = 2_000


def small_jpeg(n: int) -> bytes:
    side = 48 + (n * 37) % 113
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 40 + n % 50).convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def tiny_key(n: int) -> str:
    return f"tiny/{n:07d}"


def tiny_prefix(count: int) -> str:
    """The prefix of the first `count` tiny keys, `count` a power of ten below 10,000,000."""
    return "tiny/" + "0" * (7 - len(str(count - 1)))


def fill(settings: config.Settings, bucket: str, count: int, key, body) -> float:
    """PUT `count` objects (key(i) and body(i) their name and bytes) in parallel, a slice at a time
    (a million futures at once would hold a gigabyte); the seconds it took."""
    s3, started = aws.client("s3", settings), time.perf_counter()
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for start in range(0, count, PUT_SLICE):
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=key(i), Body=body(i)),
                          range(start, min(count, start + PUT_SLICE))))
            if count > 10 * PUT_SLICE and (start // PUT_SLICE) % 50 == 49:
                print(f"  {start + PUT_SLICE} of {count} objects put, {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


# Peak memory from VmHWM, this process's own high-water mark: getrusage's ru_maxrss carries the
# parent's over exec (it read 394 MB, the bench process's size, for both listings).
LISTER = """
import json, re, sys, time
from daas import batches, config
settings = config.load()
batch = batches.new(settings, {"source": sys.argv[1]})
batches.put_state(settings, batch)
started = time.perf_counter()
while not batch["listing"]["complete"]:
    batches.advance(settings, batch, budget=3600)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": time.perf_counter() - started, "enqueued": batch["listing"]["enqueued"],
                  "peak_rss_mb": peak_kb / 1024}))
"""


def drain(settings: config.Settings, stop: threading.Event) -> None:
    """Take the lister's messages off the queue as workers would (without running them): the
    lister waits while DAAS_BATCH_QUEUE_AHEAD messages wait."""
    sqs, url = aws.client("sqs", settings), aws.queue_url(settings, settings.queue)
    while not stop.is_set():
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if messages:
            sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                            for i, m in enumerate(messages)])


def lister_alone(settings: config.Settings, source: str) -> dict:
    """The lister in a fresh process over `source` (its queue drained meanwhile): seconds, images
    enqueued, peak memory."""
    stop = threading.Event()
    drainers = [threading.Thread(target=drain, args=(settings, stop), daemon=True) for _ in range(4)]
    for drainer in drainers:
        drainer.start()
    try:
        done = subprocess.run([PYTHON, "-c", LISTER, source], env=child_env(settings), capture_output=True,
                              text=True, timeout=3600)
    finally:
        stop.set()
        for drainer in drainers:
            drainer.join()
    if done.returncode:
        raise RuntimeError(f"the lister failed: {done.stderr[-2000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {**found, "images_per_s": round(found["enqueued"] / found["seconds"], 1),
            "peak_rss_mb": round(found["peak_rss_mb"], 1), "seconds": round(found["seconds"], 1)}


def batch_run(url: str, source: str, expected: int) -> dict:
    """A batch through the API, followed to its end: listing and end-to-end rates."""
    created = time.time()
    batch_id = requests.post(f"{url}/api/batches", json={"source": source}, timeout=60).json()["batch_id"]
    listed_at = None
    while True:
        batch = requests.get(f"{url}/api/batches/{batch_id}", timeout=60).json()
        if listed_at is None and batch["status"] != "listing":
            listed_at = time.time()
        if batch["status"] == "done":
            break
        time.sleep(0.5)
    assert batch["done"] + batch["errors"] == expected, batch
    listing_s = (listed_at or time.time()) - created
    return {"images": expected, "errors": batch["errors"], "listing_s": round(listing_s, 1),
            "enqueue_images_per_s": round(batch["enqueued"] / listing_s, 1),
            "seconds": round(batch["finished_at"] - created, 1),
            "images_per_s": round(expected / (batch["finished_at"] - created), 1)}


def run(out: Path, images: int = IMAGES, listing_keys: int = LISTING_KEYS, jobs_sample: int = JOBS_SAMPLE,
        workers: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or WORKERS_PER_CORE * (os.cpu_count() or 1)
    with workspace() as tmp, local_aws(tmp) as base:
        report: dict = {"machine": machine(base), "settings": {"workers": workers, "images": images,
                                                                "listing_keys": listing_keys, "jobs_sample": jobs_sample}}
        photos = f"bench-photos-{os.getpid()}"
        aws.client("s3", base).create_bucket(Bucket=photos)
        print(f"putting {images} small JPEGs and {listing_keys} tiny objects into s3://{photos}/…", flush=True)
        blobs = [small_jpeg(n) for n in range(200)]
        keys = [f"images/{n:06d}.jpg" for n in range(images)]
        report["put_s"] = round(fill(base, photos, images, keys.__getitem__, lambda i: blobs[i % len(blobs)]), 1)
        report["put_bytes"] = sum(len(blobs[i % len(blobs)]) for i in range(images))
        report["put_tiny_s"] = round(fill(base, photos, listing_keys, tiny_key, lambda i: b"x"), 1)
        with stack(base, tmp, "batch", batch_sources=photos, scale_max=workers) as (running, url):
            start_workers(running, workers)
            running.start_controller()
            print(f"batch: {images} images, {workers} workers…", flush=True)
            report["batch"] = batch_run(url, f"s3://{photos}/images/", images)
            print(f"the same images through POST /api/jobs: {jobs_sample} of them…", flush=True)
            sample = [(key.rsplit("/", 1)[1], blobs[i % len(blobs)]) for i, key in enumerate(keys[:jobs_sample])]
            run_ = classify_all(url, sample, timeout=1800)
            report["jobs"] = {"images": jobs_sample, "seconds": round(run_.seconds, 1),
                              "images_per_s": round(run_.images_per_s, 1)}
        with stack(base, tmp, "lister", batch_sources=photos) as (running, _):
            print("the lister alone…", flush=True)
            report["lister"] = {str(images): lister_alone(running.settings, f"s3://{photos}/images/")}
            first = min(LISTING_SAMPLE, listing_keys)
            if first < listing_keys:  # the keys tiny/0000000 … tiny/0099999 share this prefix
                report["lister"][str(first)] = lister_alone(running.settings, f"s3://{photos}/{tiny_prefix(first)}")
            report["lister"][str(listing_keys)] = lister_alone(running.settings, f"s3://{photos}/tiny/")
    report["batch_over_jobs"] = round(report["batch"]["images_per_s"] / report["jobs"]["images_per_s"], 2)
    (out / "batch.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    b, j, lister = report["batch"], report["jobs"], report["lister"]
    lines = [f"{report['machine']['cpu']} ({report['machine']['cores']} cores), {report['settings']['workers']} workers",
             f"batch of {b['images']} small images: listed and enqueued in {b['listing_s']} s "
             f"({b['enqueue_images_per_s']} images/s), all labelled in {b['seconds']} s ({b['images_per_s']} images/s)",
             f"{j['images']} of the same through POST /api/jobs: {j['seconds']} s ({j['images_per_s']} images/s); "
             f"batch / jobs: {report['batch_over_jobs']}×"]
    for count, figures in lister.items():
        lines.append(f"the lister alone over {count} keys: {figures['seconds']} s, {figures['images_per_s']} "
                     f"images/s enqueued, peak resident memory {figures['peak_rss_mb']} MB")
    return "\n".join(lines)


OUTPUTS = ("batch.json",)  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench batch` (daas.bench.main prints it)."""
    return run(out)
