"""The group commit of `/classify` (daas/coalesce.py) and the enqueueing behind it (daas/jobs.py), in
process against the local AWS endpoint. No worker: a job's tasks stay queued, and the classify
queue's messages say what was sent (issue 16)."""
import base64
import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from daas import aws, config, jobs, storage
from daas.coalesce import Coalescer
from tests.conftest import make_settings, send_from_this_process
from tests.test_web import jpeg
from web import create_app


@pytest.fixture
def settings(local_aws, tmp_path) -> config.Settings:
    return send_from_this_process(make_settings(local_aws, tmp_path, result_timeout=5.0))


class HeldUpload(io.BytesIO):
    """An upload whose bytes arrive when the test releases them: a commit that takes as long as the
    test needs (a slow disk or a slow PUT), so that the next requests gather behind it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reading, self.release = threading.Event(), threading.Event()

    def read(self, *args) -> bytes:
        self.reading.set()
        self.release.wait(30)
        return super().read(*args)


def checked(settings: config.Settings, name: str = "a.jpg") -> tuple:
    """One image past the edge checks, as a request hands it to the coalescer: (image, its file)."""
    accepted, _ = jobs.check(settings, [jobs.Upload(name, io.BytesIO(jpeg()))])
    return accepted[0]


def held(settings: config.Settings) -> tuple:
    image, _ = checked(settings, "held.jpg")
    return image, HeldUpload(jpeg())


def sent(settings: config.Settings) -> list[list]:
    """The chunks ([image id, name] pairs) in the classify queue's messages (kombu's envelope, in
    base64, around Celery's body, in base64), hidden from later reads for 30 s."""
    sqs, url, chunks = aws.client("sqs", settings), aws.queue_url(settings, settings.queue), []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                          WaitTimeSeconds=0).get("Messages", []):
        for message in messages:
            body = json.loads(base64.b64decode(json.loads(base64.b64decode(message["Body"]))["body"]))
            chunks.append(body[0][1])
    return chunks


def image_ids(chunks: list[list]) -> set[str]:
    return {image_id for chunk in chunks for image_id, _ in chunk}


def test_a_request_abandoned_while_its_group_waited_is_never_committed_and_its_group_mates_are_answered(settings):
    coalescer, first = Coalescer(settings), held(settings)
    with ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(coalescer.enqueue, "client", first)
        assert first[1].reading.wait(10)  # the first commit is under way, held
        abandoned = checked(settings, "abandoned.jpg")
        with pytest.raises(TimeoutError):
            coalescer.enqueue("client", abandoned)
        abandoned[1].close()  # as Flask does when the request ends
        later = pool.submit(coalescer.enqueue, "client", checked(settings, "later.jpg"))
        time.sleep(0.5)  # `later` waits beside the abandoned one
        first[1].release.set()
        job_id, key = later.result(timeout=10)
        with pytest.raises(TimeoutError):  # it waited as long as the abandoned one
            waiting.result(timeout=10)
    manifest = storage.get_manifest(settings, job_id)
    assert [image["name"] for image in manifest["images"]] == ["later.jpg"]
    assert key == storage.results_key(job_id, manifest["images"][0]["id"])
    # Neither stopped request was sent; nothing of the abandoned one was even stored.
    assert [[name for _, name in chunk] for chunk in sent(settings)] == [["later.jpg"]]
    inputs = aws.client("s3", settings).list_objects_v2(Bucket=settings.input_bucket).get("Contents", [])
    assert not any(obj["Key"].endswith(abandoned[0]["id"]) for obj in inputs)


def test_an_upload_that_cannot_be_stored_fails_only_its_own_request(settings):
    coalescer, first = Coalescer(settings), held(settings)
    with ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(coalescer.enqueue, "client", first)
        assert first[1].reading.wait(10)
        broken, good = checked(settings, "broken.jpg"), checked(settings, "good.jpg")
        broken[1].close()  # its bytes are gone: reading it fails
        requests = [pool.submit(coalescer.enqueue, "client", upload) for upload in (broken, good)]
        time.sleep(0.5)  # both wait for the held commit: they form the next group
        first[1].release.set()
        assert waiting.result(timeout=10)
        with pytest.raises(jobs.Rejected) as refused:
            requests[0].result(timeout=10)
        job_id, _ = requests[1].result(timeout=10)
    assert refused.value.status == 503
    assert "could not be queued (storing it failed" in str(refused.value) and "upload it again" in str(refused.value)
    status = jobs.status(settings, job_id)
    assert {image["name"]: image["status"] for image in status["images"]} == {"broken.jpg": "error",
                                                                             "good.jpg": "queued"}
    assert image_ids(sent(settings)) == {first[0]["id"], good[0]["id"]}


def test_a_failed_nudge_of_the_autoscaler_does_not_fail_the_request(settings, monkeypatch, caplog):
    # The control queue refuses the nudge (a task message is over 1 KiB) as a broker that is down would.
    sqs = aws.client("sqs", settings)
    sqs.set_queue_attributes(QueueUrl=aws.queue_url(settings, settings.control_queue),
                             Attributes={"MaximumMessageSize": "1024"})
    monkeypatch.setattr(jobs, "_last_nudge", 0.0)  # a nudge of an earlier test must not skip this one
    image = checked(settings)
    with caplog.at_level(logging.WARNING, logger="daas.jobs"):
        job_id, _ = Coalescer(settings).enqueue("client", image)
    assert image_ids(sent(settings)) == {image[0]["id"]}  # enqueued, and the request answered
    assert "could not nudge the autoscaler" in caplog.text
    assert jobs.status(settings, job_id)["status"] == "queued"


@pytest.fixture
def small_messages(local_aws, tmp_path) -> config.Settings:
    """Five images a task; the classify queue refuses messages over 3,500 bytes: a task of five
    short names fits (about 2,300 bytes), one of five 200-character names does not (about 5,000).
    A real refusal by the endpoint, mid-loop when the long names come second."""
    settings = send_from_this_process(make_settings(local_aws, tmp_path, images_per_task=5, result_timeout=5.0))
    aws.client("sqs", settings).set_queue_attributes(QueueUrl=aws.queue_url(settings, settings.queue),
                                                     Attributes={"MaximumMessageSize": "3500"})
    return settings


def long_name(i: int) -> str:
    return "x" * 190 + f"-{i}.jpg"


def test_a_send_failing_mid_loop_gives_the_unsent_images_error_results_and_the_job_finishes(small_messages):
    app = create_app(small_messages).test_client()
    names = [f"short-{i}.jpg" for i in range(5)] + [long_name(i) for i in range(5)]
    response = app.post("/api/jobs", data={"images": [(io.BytesIO(jpeg()), name) for name in names]})
    assert response.status_code == 202
    job = app.get(response.headers["Location"]).get_json()
    assert [image["status"] for image in job["images"]] == ["queued"] * 5 + ["error"] * 5
    assert all("could not be queued (the queue refused it" in image["error"] and "upload it again" in image["error"]
               for image in job["images"][5:])
    assert [[name for _, name in chunk] for chunk in sent(small_messages)] == [names[:5]]
    # None sent: the upload is refused.
    refused = app.post("/api/jobs", data={"images": [(io.BytesIO(jpeg()), long_name(i)) for i in range(5)]})
    assert refused.status_code == 503 and "could not be queued" in refused.get_json()["error"]


def test_a_classify_whose_image_was_not_queued_answers_503_and_its_job_finishes(settings):
    # The classify queue refuses every task message (each is over 1 KiB).
    aws.client("sqs", settings).set_queue_attributes(QueueUrl=aws.queue_url(settings, settings.queue),
                                                     Attributes={"MaximumMessageSize": "1024"})
    app = create_app(settings).test_client()
    response = app.post("/classify", data={"myfile": (io.BytesIO(jpeg()), "a.jpg")})
    assert response.status_code == 503
    assert "could not be queued (the queue refused it" in response.get_data(as_text=True)
    manifests = aws.client("s3", settings).list_objects_v2(Bucket=settings.output_bucket, Prefix="jobs/")
    [job_id] = [obj["Key"][len("jobs/"):-len(".json")] for obj in manifests["Contents"]]
    job = jobs.status(settings, job_id)
    assert job["status"] == "done" and job["images"][0]["status"] == "error"


def test_a_slow_commit_of_one_client_does_not_hold_up_another(settings):
    coalescer, slow = Coalescer(settings), held(settings)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(coalescer.enqueue, "key-a", slow)
        assert slow[1].reading.wait(10)
        started = time.monotonic()
        other_job, _ = coalescer.enqueue("key-b", checked(settings, "b.jpg"))
        assert time.monotonic() - started < 3 and not waiting.done()  # answered while key-a's commit is held
        slow[1].release.set()
        slow_job, _ = waiting.result(timeout=10)
    assert slow_job != other_job  # different clients never share a job


def test_a_burst_of_one_client_gathers_behind_its_commit_into_one_job(settings):
    coalescer, first = Coalescer(settings), held(settings)
    with ThreadPoolExecutor(5) as pool:
        waiting = pool.submit(coalescer.enqueue, "client", first)
        assert first[1].reading.wait(10)
        burst = [pool.submit(coalescer.enqueue, "client", checked(settings, f"{i}.jpg")) for i in range(4)]
        time.sleep(0.5)  # all four wait: one commit at a time per client
        first[1].release.set()
        first_job, _ = waiting.result(timeout=10)
        answers = [request.result(timeout=10) for request in burst]
    assert len({job_id for job_id, _ in answers}) == 1 and answers[0][0] != first_job
    assert len({key for _, key in answers}) == 1  # one task for the four
    assert sorted(len(chunk) for chunk in sent(settings)) == [1, 4]
