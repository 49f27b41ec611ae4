"""A daas.classify task's arguments are checked before it runs: anyone who can send to the queue, or
reach Flower's API (which runs any task), could otherwise make a worker write anywhere in the
buckets or send results to any queue."""
import subprocess
import sys
import uuid

import pytest

from daas import aws, replies, storage, tasks
from daas.stack import Stack, child_env
from tests.conftest import Service, make_settings, skimage_photo, wait_for

GOOD = uuid.uuid4().hex


@pytest.mark.parametrize("job_id, chunk, why", [
    ("jobs", [[GOOD, "a.png"]], "job id"),
    ("workers", [[GOOD, "a.png"]], "job id"),
    ("../" + GOOD, [[GOOD, "a.png"]], "job id"),
    (GOOD, [["workers", "a.png"]], "pair"),
    (GOOD, [[GOOD]], "pair"),
    (GOOD, [[GOOD, "x" * 201]], "pair"),
    (GOOD, [], "chunk"),
    (GOOD, "not a list", "chunk"),
])
def test_task_arguments_that_are_not_generated_ids_are_refused(job_id, chunk, why, local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    assert why in tasks.invalid_task(settings, job_id, chunk)


@pytest.mark.parametrize("pack, fine", [
    ([GOOD, [[0, 10], [10, 5]]], True),
    (["workers", [[0, 10], [10, 5]]], False),       # its key would be outside the job's images
    ([GOOD, [[0, 10]]], False),                     # a span for each image of the chunk
    ([GOOD, [[0, 10], [-1, 5]]], False),
    ([GOOD, [[0, 10], [10, True]]], False),
    ([GOOD, [[0, 10], [10, 5, 1]]], False),
    ([GOOD], False),
    ("pack", False),
])
def test_a_pack_must_name_a_generated_id_and_a_span_per_image(pack, fine, local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    problem = tasks.invalid_task(settings, GOOD, [[GOOD, "a.png"], [uuid.uuid4().hex, "b.png"]], pack=pack)
    assert (problem is None) == fine, problem
    assert fine or "offset, size" in problem


def test_a_reply_queue_must_be_one_of_the_stacks_own(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    box = replies.Replies(settings)
    try:
        own = box.queue_url()
        prefix = own.rsplit("/", 1)[0]
        assert tasks.invalid_task(settings, GOOD, [[GOOD, "a.png"]], own) is None
        for foreign in (f"{prefix}/{settings.stack}-control", f"{prefix}/other-replies-{GOOD}",
                        f"https://sqs.eu-west-1.amazonaws.com/999999999999/{settings.stack}-replies-{GOOD}", 42):
            assert "reply queue" in tasks.invalid_task(settings, GOOD, [[GOOD, "a.png"]], foreign), foreign
    finally:
        box.close()


def test_a_task_sent_with_job_id_jobs_is_dropped_and_writes_nothing(local_aws, tmp_path):
    """Sent as Flower's API or any holder of queue access would: the worker drops it (no result
    written under `jobs/`, the message gone, not retried) and goes on with real work."""
    settings = make_settings(local_aws, tmp_path)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        worker = stack.start_worker()
        send = ("from daas.tasks import classify; "
                f"classify.apply_async(('jobs', [['{GOOD}', 'x.png']]), queue='{settings.queue}')")
        subprocess.run([sys.executable, "-c", send], env=child_env(settings), check=True, timeout=60)
        log = tmp_path / "logs" / "worker.log"
        wait_for(lambda: log.exists() and "invalid arguments" in log.read_text(), 90, "the worker to drop the task")
        job = service.submit([("coffee.png", skimage_photo("coffee.png"))]).json()
        assert service.wait_job(job["job_id"])["images"][0]["label"] == "espresso"
        s3 = aws.client("s3", settings)
        assert s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=f"jobs/{GOOD}").get("KeyCount") == 0
        assert storage.get_results(settings, f"jobs/{GOOD}") is None
        # The dropped message is gone, not retried; the job's own message is deleted once its worker
        # has sent the reply, a moment after the job reads done (it was seen in flight then, once).
        wait_for(lambda: aws.queue_depth(settings) == {"visible": 0, "in_flight": 0}, 30, "the queue to drain")
        assert worker.poll() is None
