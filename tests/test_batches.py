"""Batch jobs over an S3 prefix (issue 20): globs, a bad object, a dry run, cancel, a lister killed
mid-listing and resumed, completion callbacks to a loopback receiver, and the checks of a request."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from PIL import Image

from daas import aws, batches, callbacks, config, jobs, storage
from daas.stack import Stack, child_env
from tests.conftest import make_settings, skimage_photo, wait_for
from tests.test_metrics import scrape


def jpeg(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(skimage_photo(name))).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiny_jpeg(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (n % 256, (7 * n) % 256, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def source_bucket(settings: config.Settings, objects: dict[str, bytes]) -> str:
    """A bucket of the user's (not the stack's), holding `objects`."""
    s3, bucket = aws.client("s3", settings), f"{settings.stack}-photos"
    s3.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


def parts(settings: config.Settings, prefix: str) -> list[dict]:
    s3 = aws.client("s3", settings)
    lines = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.output_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".jsonl"):
                body = s3.get_object(Bucket=settings.output_bucket, Key=obj["Key"])["Body"].read().decode()
                lines += [json.loads(text) for text in body.splitlines()]
    return lines


class Receiver:
    """A callback receiver on loopback that answers 500 to the first `failures` calls, then 200."""

    def __init__(self, failures: int):
        self.calls: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(500 if len(receiver.calls) <= failures else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_batch_lists_its_prefix_classifies_from_the_source_and_calls_back(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, callback_allow_private=True, callback_secret="s3cret",
                             batch_interval=1.0, scale_max=1)
    photos = {"2026/coffee.jpg": jpeg("coffee.png"), "2026/deep/chelsea.jpg": jpeg("chelsea.png"),
              "2026/cut.jpg": jpeg("coffee.png")[:900], "2026/notes.txt": b"not an image",
              "2026/skip/coffee.jpg": jpeg("coffee.png"), "2025/coffee.jpg": jpeg("coffee.png")}
    bucket = source_bucket(settings, photos)
    settings = settings.with_(batch_sources=bucket)
    aws.ensure_resources(settings)
    receiver = Receiver(failures=2)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        stack.start_controller()
        request = {"source": f"s3://{bucket}/2026/", "include": "*.jpg", "exclude": "skip/*",
                   "output": f"s3://{settings.output_bucket}/batch-results/nightly/"}
        dry = requests.post(f"{url}/api/batches", json={**request, "dry_run": True}, timeout=30)
        assert dry.status_code == 200, dry.text
        assert dry.json()["count"] == 3
        assert dry.json()["bytes"] == sum(len(photos[k]) for k in ("2026/coffee.jpg", "2026/deep/chelsea.jpg",
                                                                     "2026/cut.jpg"))
        created = requests.post(f"{url}/api/batches", json={**request, "callback_url": receiver.url}, timeout=30)
        assert created.status_code == 202, created.text
        batch_id = created.json()["batch_id"]

        def finished():
            batch = requests.get(f"{url}/api/batches/{batch_id}", timeout=30).json()
            return batch if batch["status"] == "done" else None

        batch = wait_for(finished, 120, "the batch to finish")
        assert (batch["listed"], batch["enqueued"], batch["done"], batch["errors"]) == (5, 3, 2, 1)
        lines = {line["key"]: line for line in parts(settings, f"batch-results/nightly/{batch_id}/")}
        assert set(lines) == {"2026/coffee.jpg", "2026/deep/chelsea.jpg", "2026/cut.jpg"}
        assert lines["2026/coffee.jpg"]["label"] == "espresso"
        assert lines["2026/cut.jpg"]["label"] is None and "image" in lines["2026/cut.jpg"]["error"]
        manifest = json.loads(aws.client("s3", settings).get_object(
            Bucket=settings.output_bucket, Key=f"batch-results/nightly/{batch_id}/manifest.json")["Body"].read())
        assert (manifest["status"], manifest["done"], manifest["errors"]) == ("done", 2, 1)

        # The callback: refused twice (500), accepted the third time, signed with the secret.
        wait_for(lambda: len(receiver.calls) == 3, 60, "three callback attempts")
        headers, body = receiver.calls[-1]
        expected = callbacks.signature(callbacks.signing_secret("s3cret"), body)
        assert headers[callbacks.SIGNATURE_HEADER] == expected
        assert json.loads(body)["batch_id"] == batch_id and json.loads(body)["status"] == "done"
        outcome = wait_for(lambda: requests.get(f"{url}/api/batches/{batch_id}", timeout=30).json()
                           .get("callback", {}).get("status") == "delivered" and
                           requests.get(f"{url}/api/batches/{batch_id}", timeout=30).json()["callback"],
                           30, "the callback's outcome recorded")
        assert outcome["attempts"] == 3
        # The CLI: a dry run, then a batch followed to its end.
        cli = [sys.executable, "-m", "daas", "batch", "--url", url]
        dry_cli = subprocess.run([*cli, f"s3://{bucket}/2026/", "--include", "*.jpg", "--dry-run"],
                                 capture_output=True, text=True, timeout=60, env=child_env(settings))
        assert dry_cli.returncode == 0, dry_cli.stdout + dry_cli.stderr
        assert re.fullmatch(r"4 images, [0-9.]+ kB would be classified\n", dry_cli.stdout), dry_cli.stdout
        run = subprocess.run([*cli, f"s3://{bucket}/2026/deep/"], capture_output=True, text=True, timeout=120,
                             env=child_env(settings))
        assert run.returncode == 0 and "done: 1 labelled, 0 errors" in run.stdout, run.stdout + run.stderr
        # The controller's counters: what it listed and enqueued, the batch's outcome, the callback.
        counted = scrape(f"http://127.0.0.1:{settings.controller_metrics_port}")
        assert counted[("daas_batch_objects_listed_total", ())] == 5 + 1  # the CLI's batch listed 1 more
        assert counted[("daas_batch_images_enqueued_total", ())] == 3 + 1
        assert counted[("daas_batch_images_finished_total", (("outcome", "error"),))] == 1
        assert counted[("daas_callbacks_total", (("outcome", "delivered"),))] == 1
        # Nothing of the batch went through the web tier's input bucket.
        assert aws.client("s3", settings).list_objects_v2(Bucket=settings.input_bucket).get("KeyCount", 0) == 0
    receiver.close()


def test_a_job_callback_is_signed_with_the_key_and_retried(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, callback_allow_private=True, api_keys="k-one,k-two",
                             batch_interval=1.0, scale_max=1)
    receiver = Receiver(failures=2)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        stack.start_controller()
        auth = {"Authorization": "Bearer k-two"}
        sent = requests.post(f"{url}/api/jobs", headers=auth, data={"callback_url": receiver.url},
                             files=[("images", ("coffee.png", skimage_photo("coffee.png")))], timeout=60)
        assert sent.status_code == 202, sent.text
        job_id = sent.json()["job_id"]
        wait_for(lambda: len(receiver.calls) == 3, 120, "the job's callback, third attempt")
        headers, body = receiver.calls[-1]
        assert headers[callbacks.SIGNATURE_HEADER] == callbacks.signature(callbacks.signing_secret("k-two"), body)
        summary = json.loads(body)
        assert summary["job_id"] == job_id and summary["images"][0]["label"] == "espresso"
        job = wait_for(lambda: (j := requests.get(f"{url}/api/jobs/{job_id}", headers=auth, timeout=30).json())
                       .get("callback", {}).get("status") == "delivered" and j, 30, "the outcome on the job")
        assert job["callback"]["attempts"] == 3

    receiver.close()


def test_the_api_refuses_a_private_callback_url_before_storing_anything():
    from web import create_app

    app = create_app(config.Settings(stack="s", callback_secret="x", aws_endpoint="http://127.0.0.1:9"))
    http = app.test_client()
    for private in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://10.1.2.3/hook"):
        refused = http.post("/api/jobs", data={"callback_url": private,
                                                "images": (io.BytesIO(skimage_photo("coffee.png")), "coffee.png")})
        assert refused.status_code == 400 and "private" in refused.json["error"], refused.json
        refused = http.post("/api/batches", json={"source": "s3://s-input/x/", "callback_url": private})
        assert refused.status_code == 400 and "private" in refused.json["error"], refused.json


def test_private_callback_urls_are_refused_unless_allowed():
    strict, open_ = config.Settings(), config.Settings(callback_allow_private=True)
    for url in ("http://127.0.0.1/x", "http://localhost:8080/x", "http://169.254.169.254/", "http://[::1]/",
                "http://192.168.1.10/", "http://100.64.0.1/"):
        with pytest.raises(callbacks.Refused, match="private"):
            callbacks.check_url(strict, url)
    assert callbacks.check_url(open_, "http://127.0.0.1/x") == "http://127.0.0.1/x"
    for url in ("ftp://example.com/", "file:///etc/passwd", "http:///x", 42):
        with pytest.raises(callbacks.Refused, match="http"):
            callbacks.check_url(open_, url)
    with pytest.raises(callbacks.Refused, match="DAAS_CALLBACK_SECRET"):
        callbacks.secret_for(strict, "")


def test_deliver_gives_up_after_its_time_and_says_why():
    waits = []
    settings = config.Settings(callback_allow_private=True, callback_timeout=20)
    outcome = callbacks.deliver(settings, "http://127.0.0.1:9/nothing-listens", "s", {"a": 1}, sleep=waits.append)
    assert outcome["status"] == "failed" and outcome["attempts"] == len(waits) + 1
    assert waits == [1, 2, 4, 8]  # doubling, and no wait past the 20 s allowed in all (1+2+4+8+16 > 20)
    assert "Connection refused" in outcome["error"] or "connect" in outcome["error"].lower()


def test_a_cancelled_batch_skips_the_chunks_not_started(local_aws, tmp_path):
    # No autoscaler tick for an hour: nothing starts a worker before the test does.
    settings = make_settings(local_aws, tmp_path, batch_interval=1.0, scale_interval=3600, scale_max=1)
    bucket = source_bucket(settings, {f"img/{n:04d}.jpg": tiny_jpeg(n) for n in range(60)})
    settings = settings.with_(batch_sources=bucket)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        stack.start_controller()  # no worker yet: the chunks wait in the queue
        batch_id = requests.post(f"{url}/api/batches", json={"source": f"s3://{bucket}/img/"},
                                 timeout=30).json()["batch_id"]
        wait_for(lambda: requests.get(f"{url}/api/batches/{batch_id}", timeout=30).json()["enqueued"] == 60,
                 60, "the listing")
        cancelled = requests.delete(f"{url}/api/batches/{batch_id}", timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        stack.start_worker()
        wait_for(lambda: aws.queue_depth(settings) == {"visible": 0, "in_flight": 0}, 90, "the queue drained")
        batch = wait_for(lambda: (b := requests.get(f"{url}/api/batches/{batch_id}", timeout=30).json())
                         ["finished_at"] and b, 30, "the batch finished as cancelled")
        assert (batch["status"], batch["done"], batch["errors"]) == ("cancelled", 0, 0)
        assert parts(settings, f"batch-results/{batch_id}/") == []
        log = (tmp_path / "logs" / "worker.log").read_text()
        assert len(re.findall(rf"batch {batch_id}: chunk \d+-[0-9a-f]+ is finished or cancelled: skipped", log)) == 6


LISTER = """
import sys, time
from daas import batches, config
batches.PAGE_KEYS = 25
settings = config.load()
batch = batches.get_state(settings, sys.argv[1])
while not batch["listing"]["complete"]:
    batches.advance(settings, batch, budget=0.1)
    time.sleep(0.05)
"""


def test_a_lister_killed_mid_listing_resumes_without_sending_an_image_twice(local_aws, tmp_path):
    count = 400
    settings = make_settings(local_aws, tmp_path, batch_interval=1.0, scale_max=1)
    bucket = source_bucket(settings, {f"p/{n:05d}.jpg": tiny_jpeg(n) for n in range(count)})
    settings = settings.with_(batch_sources=bucket)
    batch = batches.new(settings, {"source": f"s3://{bucket}/p/"})
    batches.put_state(settings, batch)  # stored but not yet active: only our lister lists it
    lister = subprocess.Popen([sys.executable, "-c", LISTER, batch["batch_id"]], env=child_env(settings))
    wait_for(lambda: batches.get_state(settings, batch["batch_id"])["listing"]["enqueued"] >= 100, 60,
             "the lister under way")
    lister.kill()
    lister.wait()
    halfway = batches.get_state(settings, batch["batch_id"])["listing"]
    assert 0 < halfway["enqueued"] < count and not halfway["complete"]

    with Stack(settings, log_dir=tmp_path / "logs") as stack:  # a controller resumes it, workers run it
        aws.client("s3", settings).put_object(Bucket=settings.output_bucket,
                                              Key=f"{batches.ACTIVE}{batch['batch_id']}", Body=b"")
        stack.start_worker()
        stack.start_controller()
        url = stack.start_web()
        done = wait_for(lambda: (b := requests.get(f"{url}/api/batches/{batch['batch_id']}", timeout=30).json())
                        ["status"] == "done" and b, 180, "the resumed batch done")
    assert (done["listed"], done["enqueued"], done["done"], done["errors"]) == (count, count, count, 0)
    keys = [line["key"] for line in parts(settings, f"batch-results/{batch['batch_id']}/")]
    assert sorted(keys) == [f"p/{n:05d}.jpg" for n in range(count)]  # each once: none missed, none twice
    classified = re.findall(r"daas\.classify_objects\[[^\]]+\] succeeded in [\d.]+s: (\d+)",
                            (tmp_path / "logs" / "worker.log").read_text())
    assert sum(map(int, classified)) == count  # a chunk the kill sent twice is skipped, not run again


@pytest.mark.parametrize("request_, status, message", [
    ({"source": "s3://elsewhere/x/"}, 403, "may not read"),
    ({"source": "/local/folder"}, 400, "S3 URL"),
    ({"source": "s3://{input}/x/", "output": "s3://other/x/"}, 400, "output bucket"),
    ({"source": "s3://{input}/x/", "output": "s3://{output}/jobs/"}, 400, "results go under"),
    ({"source": "s3://{input}/x/", "include": 5}, 400, "glob"),
    ({"source": "s3://{input}/x/", "colour": "red"}, 400, "unknown fields"),
    ([1, 2], 400, "JSON object"),
])
def test_a_batch_request_gets_a_clear_refusal(request_, status, message):
    settings = config.Settings(stack="s")
    if isinstance(request_, dict):
        request_ = {k: v.format(input=settings.input_bucket, output=settings.output_bucket) if isinstance(v, str) else v
                    for k, v in request_.items()}
    with pytest.raises(jobs.Rejected, match=message) as refused:
        batches.new(settings, request_)
    assert refused.value.status == status


def test_globs_match_below_the_prefix_and_chunks_are_checked():
    batch = batches.new(config.Settings(stack="s"), {"source": "s3://s-input/a/", "include": "*.jpg",
                                                     "exclude": "raw/*"})
    assert batches.matches(batch, "a/x.jpg") and batches.matches(batch, "a/deep/x.jpg")
    assert not batches.matches(batch, "a/raw/x.jpg") and not batches.matches(batch, "a/x.png")
    assert not batches.matches(batch, "a/folder.jpg/")
    everything = batches.new(config.Settings(stack="s"), {"source": "s3://s-input/"})
    assert batches.matches(everything, "photos/x.jpg")  # the default glob takes every key...
    assert not batches.matches(everything, storage.pack_key("0" * 32, "1" * 32))  # ...but the web tier's packs
    assert batches.invalid_chunk("0" * 32, 3, ["a/x.jpg"], 10) is None
    assert "batch id" in batches.invalid_chunk("jobs", 3, ["a"], 10)
    assert "keys" in batches.invalid_chunk("0" * 32, 3, [], 10)
    assert "keys" in batches.invalid_chunk("0" * 32, 3, ["a\nb"], 10)
    assert "chunk number" in batches.invalid_chunk("0" * 32, -1, ["a"], 10)


def test_the_lister_pauses_while_the_queue_holds_enough_and_goes_on_after(local_aws, tmp_path, monkeypatch):
    from tests.conftest import send_from_this_process

    settings = make_settings(local_aws, tmp_path, batch_queue_ahead=3, images_per_task=10)
    bucket = source_bucket(settings, {f"q/{n:03d}.jpg": b"x" for n in range(100)})
    settings = send_from_this_process(settings.with_(batch_sources=bucket))
    monkeypatch.setattr(batches, "PAGE_KEYS", 20)  # two chunks a page
    batch = batches.new(settings, {"source": f"s3://{bucket}/q/"})
    started = time.monotonic()
    batches.advance(settings, batch, budget=2.5)
    assert time.monotonic() - started >= 1.5  # it waited for room, up to its budget
    assert batch["listing"]["enqueued"] == 40 and not batch["listing"]["complete"]  # 4 messages >= 3: paused
    assert aws.queue_depth(settings)["visible"] == 4
    aws.client("sqs", settings).purge_queue(QueueUrl=aws.queue_url(settings, settings.queue))
    batches.advance(settings, batch, budget=2.5)
    assert batch["listing"]["enqueued"] == 80  # room for two more pages, then full again


def test_a_chunk_sent_again_after_a_lost_checkpoint_has_the_same_number_and_keys(local_aws, tmp_path, monkeypatch):
    """The kill that the resume test may or may not hit, made certain: a send whose checkpoint was
    lost, resumed with another page size. Every chunk number goes out with the same keys each time
    (so a worker skips the second copy), and every key is in a chunk."""
    from daas import tasks
    from tests.conftest import send_from_this_process

    settings = make_settings(local_aws, tmp_path, images_per_task=10)
    bucket = source_bucket(settings, {f"c/{n:03d}.jpg": b"x" for n in range(100)})
    settings = send_from_this_process(settings.with_(batch_sources=bucket))
    batch = batches.new(settings, {"source": f"s3://{bucket}/c/"})
    monkeypatch.setattr(batches, "PAGE_KEYS", 25)
    batches.advance(settings, batch, budget=0)  # one page: chunks 0 and 1 sent, keys 20-24 left for later
    lost = json.loads(json.dumps(batch))
    batches.advance(settings, batch, budget=0)  # chunks 2 and 3 sent: then "killed" before its checkpoint
    assert (lost["listing"]["chunks"], batch["listing"]["chunks"]) == (2, 4)
    monkeypatch.setattr(batches, "PAGE_KEYS", 1000)
    while not lost["listing"]["complete"]:
        batches.advance(settings, lost)
    sqs, url = aws.client("sqs", settings), aws.queue_url(settings, settings.queue)
    sent: dict[int, list] = {}
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            batch_id, chunk, keys = tasks.batch_chunk_args(message["Body"])
            sent.setdefault(chunk, []).append(keys)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert sorted(sent) == list(range(10)) and [len(copies) for _, copies in sorted(sent.items())] == [1, 1, 2, 2] + [1] * 6
    assert all(copies[0] == copies[-1] for copies in sent.values())
    assert sorted(key for copies in sent.values() for key in copies[0]) == [f"c/{n:03d}.jpg" for n in range(100)]
    assert (lost["listing"]["listed"], lost["listing"]["enqueued"]) == (100, 100)
