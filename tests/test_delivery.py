"""Delivery guarantees with real processes: a killed worker loses no image."""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daas import aws, fleet
from daas.stack import Stack
from tests.conftest import Service, make_settings, skimage_photo, wait_for


def test_images_held_by_a_killed_worker_come_back(local_aws, tmp_path):
    # 20 tasks of 2 images: when the first results show, the worker still has about a second of work
    # in hand (with 2 tasks of 8, a worker reading each task's images in one GET could finish the
    # second between two polls, and hold nothing when killed).
    settings = make_settings(local_aws, tmp_path, visibility_timeout=5, prefetch_multiplier=4, images_per_task=2)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        doomed = stack.start_worker("doomed")
        photo = skimage_photo("coffee.png")
        job = service.submit([(f"{i}.png", photo) for i in range(40)]).json()

        # Kill the worker (SIGKILL: no warm shutdown, no acks) while it holds messages.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = service.http.get(f"{service.url}/api/jobs/{job['job_id']}").json()
            if status["finished"] >= 2:
                break
            time.sleep(0.1)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        held = aws.queue_depth(settings)["in_flight"]
        assert held >= 1, "the killed worker should have held unacknowledged messages"

        stack.start_worker("rescuer")
        done = service.wait_job(job["job_id"], timeout=120)
        assert [image["label"] for image in done["images"]] == ["espresso"] * 40


def big_png() -> bytes:
    """A 49-megapixel PNG of a few hundred bytes: a quarter to half a second to decode."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000)).save(buffer, format="PNG")
    return buffer.getvalue()


def dead_letters(settings) -> int:
    sqs = aws.client("sqs", settings)
    attributes = sqs.get_queue_attributes(QueueUrl=aws.queue_url(settings, settings.dead_letter_queue),
                                          AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def task_lines(log_dir: Path, event: str) -> list[str]:
    """The workers' log lines `Task daas.classify[<id>] <event>` (received, succeeded)."""
    return [line for log in log_dir.glob("*.log") for line in log.read_text().splitlines()
            if "Task daas.classify[" in line and f"] {event}" in line]


def test_a_long_task_runs_once_and_its_busy_worker_lives_through_housekeeping(local_aws, tmp_path):
    """Thirty 49-megapixel PNGs in one task (7 s on a fast 2-core machine, half a minute on a slow
    one, against a 2-second visibility timeout) on one of two workers: the busy worker keeps its
    message invisible and keeps beating while the task runs, so the other never gets the message,
    and housekeeping leaves the busy worker and its pidbox alone."""
    from daas import control
    from daas.providers import LocalProvider

    settings = make_settings(local_aws, tmp_path, visibility_timeout=2, heartbeat_interval=1, images_per_task=30,
                             queue_lease_interval=0.5)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        workers = [stack.start_worker("first"), stack.start_worker("second")]
        wait_for(lambda: len(fleet.heartbeats(settings)) == 2, 90, "both workers to beat")
        png = big_png()
        job = service.submit([(f"big{i}.png", png) for i in range(30)]).json()
        wait_for(lambda: task_lines(tmp_path / "logs", "received"), 60, "a worker to take the task")
        started = time.monotonic()
        while not service.http.get(f"{service.url}/api/jobs/{job['job_id']}").json()["status"] == "done":
            ended, live = control.end_broken_workers(settings, LocalProvider(settings))
            assert ended == {} and len(live) == 2, (ended, live)
            assert control.sweep(settings) == []  # its leases expire 2.5 s after their last renewal
            time.sleep(0.5)
        assert time.monotonic() - started > 2 * settings.visibility_timeout, "the task should outlast the timeout"
        assert len(task_lines(tmp_path / "logs", "received")) == 1
        assert all(worker.poll() is None for worker in workers)
        done = service.wait_job(job["job_id"])
        assert {image["status"] for image in done["images"]} == {"done"}


def test_a_stalled_worker_is_ended_and_the_images_it_held_come_back(local_aws, tmp_path):
    """SIGSTOP: the process lives but does nothing. Its messages come back after the visibility
    timeout (nobody extends them), and housekeeping ends it once it missed its heartbeats."""
    from daas import control
    from daas.providers import LocalProvider

    settings = make_settings(local_aws, tmp_path, visibility_timeout=3, heartbeat_interval=1)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        stuck = stack.start_worker("stuck")
        wait_for(lambda: fleet.heartbeats(settings), 90, "the worker to beat")
        job = service.submit([(f"big{i}.png", big_png()) for i in range(3)]).json()
        wait_for(lambda: task_lines(tmp_path / "logs", "received"), 60, "the worker to take the task")
        os.kill(stuck.pid, signal.SIGSTOP)
        rescuer = stack.start_worker("rescuer")
        done = service.wait_job(job["job_id"], timeout=120)
        assert {image["status"] for image in done["images"]} == {"done"}
        assert all(image["worker"] for image in done["images"])
        ended = wait_for(lambda: control.end_broken_workers(settings, LocalProvider(settings))[0], 30,
                         "housekeeping to end the stalled worker")
        assert list(ended) == [str(stuck.pid)] and "no heartbeat" in ended[str(stuck.pid)]
        assert stuck.wait(10) == -signal.SIGKILL and rescuer.poll() is None


def test_a_foreign_message_is_dead_lettered_and_no_worker_crashes(local_aws, tmp_path):
    import base64
    import json

    from daas import control

    settings = make_settings(local_aws, tmp_path, visibility_timeout=1)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        worker = stack.start_worker()
        sqs, url = aws.client("sqs", settings), aws.queue_url(settings, settings.queue)
        foreign = {"properties": {"delivery_info": {}}, "headers": {"task": "nope"}, "body": "x"}
        sqs.send_message(QueueUrl=url, MessageBody=base64.b64encode(json.dumps(foreign).encode()).decode())
        sqs.send_message(QueueUrl=url, MessageBody="not even base64 {")
        job = service.submit([("coffee.png", skimage_photo("coffee.png"))]).json()
        assert service.wait_job(job["job_id"])["images"][0]["label"] == "espresso"
        wait_for(lambda: dead_letters(settings) == 2, 60, "both messages in the dead-letter queue")
        assert worker.poll() is None
        log = (tmp_path / "logs" / "worker.log").read_text()
        assert log.count("rejected a message that is not a daas task") == 2 * settings.max_receives
        assert "Unrecoverable" not in log and "CRITICAL" not in log and "Traceback" not in log
        assert control.reap(settings) == 0 and dead_letters(settings) == 0


def test_a_failure_that_cannot_be_recorded_waits_for_storage_in_the_dead_letter_queue(local_aws, tmp_path):
    """The worker's output bucket does not exist (storage down for it): the task fails on every
    delivery, its message is never acknowledged and ends in the dead-letter queue, the job stays
    queued, nothing is lost; the reaper records the failure once it can write."""
    from daas import control
    from daas.stack import PYTHON

    settings = make_settings(local_aws, tmp_path, visibility_timeout=1)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        worker = stack.spawn("worker", [PYTHON, "-m", "daas", "worker", "--processes", "1"], {"DAAS_OUTPUT_BUCKET": f"{settings.stack}-gone"})
        job = service.submit([("coffee.png", skimage_photo("coffee.png"))]).json()
        wait_for(lambda: dead_letters(settings) == 1, 90, "the message in the dead-letter queue")
        assert service.http.get(f"{service.url}/api/jobs/{job['job_id']}").json()["status"] == "queued"
        assert worker.poll() is None
        assert control.reap(settings) == 1
        image = service.wait_job(job["job_id"], timeout=10)["images"][0]
        assert image["status"] == "error" and "3 attempts failed" in image["error"]


def test_the_reply_listener_lives_through_unreadable_replies_and_replying_never_raises(local_aws, tmp_path):
    """A web process's listener skips what it cannot read and wakes the waiter of the next reply; a
    worker whose reply cannot be sent (the web process gone) still finishes its task."""
    import json

    from daas import replies

    settings = make_settings(local_aws, tmp_path)
    box = replies.Replies(settings)
    url = box.queue_url()
    sqs = aws.client("sqs", settings)
    try:
        sqs.send_message(QueueUrl=url, MessageBody="not json")
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"no": "key"}))
        time.sleep(1)
        replies.send(settings, url, "job/chunk", [{"id": "a", "label": "espresso"}])
        assert box.wait("job/chunk", lambda: None, timeout=30) == [{"id": "a", "label": "espresso"}]
        replies.send(settings, url.rsplit("/", 1)[0] + "/gone", "job/other", [])  # logged, not raised
    finally:
        box.close()


def test_a_heartbeat_put_that_s3_holds_delays_neither_the_visibility_extension_nor_the_next_beat(local_aws, tmp_path):
    """Issue 16: while a long task runs (as in the test above), S3 holds each worker's next heartbeat
    PUT for 30 s (a proxy in front of the endpoint, tests/aws_proxy.py). The visibility extension has
    a thread of its own and the PUT gives up within a round, so no second worker gets the task's
    message (it runs once), and the next beats keep both records fresh (housekeeping ends no one).
    Before: one thread did both, with botocore's 60 s timeouts; the held PUT stopped the extension."""
    from daas import control
    from daas.providers import LocalProvider
    from tests.aws_proxy import AwsProxy, Rule

    with AwsProxy(local_aws) as proxy:
        settings = make_settings(proxy.url, tmp_path, visibility_timeout=2, heartbeat_interval=2, images_per_task=30)
        with Stack(settings, log_dir=tmp_path / "logs") as stack:
            service = Service(stack, stack.start_web())
            workers = {name: stack.start_worker(name) for name in ("first", "second")}
            wait_for(lambda: len(fleet.heartbeats(settings)) == 2, 90, "both workers to beat")
            png = big_png()  # 30 in one task, as above: it ran 10.7-11.2 s past the hold's start
            job = service.submit([(f"big{i}.png", png) for i in range(30)]).json()  # (5 visibility timeouts)
            wait_for(lambda: task_lines(tmp_path / "logs", "received"), 60, "a worker to take the task")
            proxy.add(Rule("PUT", f"/{settings.output_bucket}/{fleet.PREFIX}", hold=30, once_per_path=True))
            while not service.http.get(f"{service.url}/api/jobs/{job['job_id']}").json()["status"] == "done":
                ended, live = control.end_broken_workers(settings, LocalProvider(settings))
                assert ended == {} and len(live) == 2, (ended, live)
                time.sleep(0.5)
            finished = time.time()
            busy = next(worker for name, worker in workers.items()
                        if "] received" in (tmp_path / "logs" / f"{name}.log").read_text())
            held = [at for at, _, path in proxy.held if f"-worker-{busy.pid}@" in path]
            assert held and finished - held[0] > settings.visibility_timeout + 1, \
                "the busy worker's heartbeat PUT should be held while its task runs on, past the timeout"
            assert len(task_lines(tmp_path / "logs", "received")) == 1
            assert all(worker.poll() is None for worker in workers.values())
            assert {image["status"] for image in service.wait_job(job["job_id"])["images"]} == {"done"}


def test_a_killed_consumers_open_long_poll_takes_the_next_message_until_the_visibility_timeout(local_aws, tmp_path):
    """What the README's Delivery section and daas.lifecycle.Retirement build on: SQS completes a
    long poll whose client is gone, so a message that arrives meanwhile is taken by nobody and comes
    back only after the visibility timeout (AWS does the same: aws/aws-sdk-js#2350). A retiring
    worker therefore waits out its last poll; a SIGKILLed one cannot."""
    settings = make_settings(local_aws, tmp_path)
    sqs = aws.client("sqs", settings)
    url = sqs.create_queue(QueueName=f"{settings.stack}-ghost-poll", Attributes={"VisibilityTimeout": "3"})["QueueUrl"]
    poller = subprocess.Popen([sys.executable, "-c", (
        "import boto3; sqs = boto3.client('sqs', endpoint_url=%r, region_name=%r); print('polling', flush=True); "
        "sqs.receive_message(QueueUrl=%r, WaitTimeSeconds=8)") % (local_aws, settings.region, url)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert poller.stdout.readline().strip() == "polling"
        time.sleep(1.5)  # its receive is open on the endpoint
        poller.send_signal(signal.SIGKILL)
        poller.wait(10)
        sqs.send_message(QueueUrl=url, MessageBody="sent after the poller died")
        time.sleep(0.5)
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages") is None
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        assert counts["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1", "the dead poll took it"
        sent = time.monotonic()
        back = wait_for(lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages"), 20,
                        "the message to come back")
        assert back[0]["Body"] == "sent after the poller died" and time.monotonic() - sent >= 2
    finally:
        poller.kill()
        sqs.delete_queue(QueueUrl=url)
