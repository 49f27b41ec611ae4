"""A web process's reply queue (daas/replies.py): its listener never ends while the process serves,
and it proves its owner alive with a lease that housekeeping reads (daas/leases.py)."""
import time

from daas import aws, leases, replies
from tests.conftest import make_settings, wait_for


def test_the_listener_outlives_a_failed_re_creation_of_its_vanished_queue(local_aws, tmp_path, monkeypatch):
    # Polls of 2 s (a poll never outlasts a lease period), not 20: the one open at the deletion ends sooner.
    settings = make_settings(local_aws, tmp_path, queue_lease_interval=2)
    box = replies.Replies(settings)
    first = box.queue_url()
    sqs, create, failures = aws.client("sqs", settings), box._create, []

    def create_failing_once() -> str:  # the endpoint refuses the first re-creation (throttled, say)
        if not failures:
            failures.append(time.monotonic())
            raise ConnectionError("the endpoint did not answer")
        return create()

    monkeypatch.setattr(box, "_create", create_failing_once)
    try:
        sqs.delete_queue(QueueUrl=first)
        second = wait_for(lambda: box.url if box.url != first else None, 60, "a new reply queue")
        assert failures, "the first re-creation should have failed"
        replies.send(settings, second, "job/chunk", [{"id": "a", "label": "espresso"}])
        assert box.wait("job/chunk", lambda: None, timeout=30) == [{"id": "a", "label": "espresso"}]
    finally:
        box.close()


def test_the_listener_renews_its_queues_lease(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, queue_lease_interval=0.5)
    box = replies.Replies(settings)
    url = box.queue_url()
    sqs = aws.client("sqs", settings)
    try:
        created = float(sqs.list_queue_tags(QueueUrl=url)["Tags"][leases.ALIVE_TAG])
        assert sqs.list_queue_tags(QueueUrl=url)["Tags"][leases.STACK_TAG] == settings.stack
        # The listener long-polls for 20 s at most, then renews: the lease moves on.
        wait_for(lambda: float(sqs.list_queue_tags(QueueUrl=url)["Tags"][leases.ALIVE_TAG]) > created, 45,
                 "the lease to be renewed")
    finally:
        box.close()


def test_healthz_takes_a_web_process_whose_listener_ended_out_of_the_balancer(local_aws, tmp_path, monkeypatch):
    """/healthz judges what its own host serves (issue 17): its buckets, its queue and its reply
    listener; without a listener every /classify would wait out its timeout."""
    from web import create_app, views

    settings = make_settings(local_aws, tmp_path)
    app = create_app(settings).test_client()
    monkeypatch.setattr(views, "_healthy_until", 0.0)
    box = replies.for_settings(settings)
    assert app.get("/healthz").status_code == 200  # no listener yet: none needed before a /classify
    monkeypatch.setattr(box, "_listen", lambda: None)  # a listener that ends at once
    try:
        box.queue_url()
        wait_for(lambda: not box.listener.is_alive(), 10, "the listener to end")
        answer = app.get("/healthz")
        assert answer.status_code == 503 and "reply listener has stopped" in answer.get_json()["error"]
    finally:
        box.close()
