"""Flower and remote control over the real SQS broker, with SNS fanout (daas/transport.py)."""
import subprocess
import sys
import uuid

import requests

from daas import aws
from daas.stack import Stack, child_env
from tests.conftest import Service, make_settings, skimage_photo, wait_for


def stack_queues(settings) -> set[str]:
    urls = aws.client("sqs", settings).list_queues(QueueNamePrefix="").get("QueueUrls", [])
    names = {url.rsplit("/", 1)[1] for url in urls}
    return {n for n in names if settings.stack in n} - {
        settings.queue, settings.dead_letter_queue, settings.control_queue}


def subscriptions(settings) -> list[str]:
    sns = aws.client("sns", settings)
    return [s["Endpoint"] for t in sns.list_topics()["Topics"] if settings.stack in t["TopicArn"]
            for s in sns.list_subscriptions_by_topic(TopicArn=t["TopicArn"])["Subscriptions"]]



def test_flower_sees_workers_and_tasks_and_nothing_is_left_behind(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, idle_timeout=20, flower_user="ops", flower_password="pw")
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        flower = stack.start_flower()
        auth = ("ops", "pw")
        assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401  # basic auth on
        worker = stack.start_worker()
        job = service.submit([("coffee.png", skimage_photo("coffee.png")), ("camera.png", skimage_photo("camera.png"))])
        service.wait_job(job.json()["job_id"])

        # Remote control answers over SQS/SNS.
        env = child_env(settings)
        ping = subprocess.run([sys.executable, "-m", "celery", "-A", "daas.celery_app", "inspect", "ping",
                               "--timeout", "5"], env=env, capture_output=True, text=True, timeout=60)
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        active = subprocess.run([sys.executable, "-m", "celery", "-A", "daas.celery_app", "inspect", "active",
                                 "--timeout", "5"], env=env, capture_output=True, text=True, timeout=60)
        assert active.returncode == 0 and f"{settings.stack}-worker-{worker.pid}@" in active.stdout

        # Flower's API lists the worker and the finished tasks with state, runtime and result.
        workers = wait_for(lambda: requests.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=30).json(),
                           30, "Flower to list the worker")
        assert any(name.startswith(f"{settings.stack}-worker-{worker.pid}@") for name in workers)
        tasks = wait_for(lambda: [t for t in requests.get(f"{flower}/api/tasks", auth=auth, timeout=10).json().values()
                                  if t["name"] == "daas.classify" and t["state"] == "SUCCESS"] or None,
                         30, "Flower to list the finished tasks")
        # The job's two images travel as one task (a chunk), which reports how many it classified.
        assert len(tasks) == 1 and all(t["runtime"] > 0 and t["worker"].startswith(f"{settings.stack}-worker")
                                       and t["result"] == "2" for t in tasks)
        assert {t["args"].split(",")[0].strip("(' ") for t in tasks} == {job.json()["job_id"]}

        def dashboard() -> dict[str, bool]:
            rows = requests.get(f"{flower}/workers?json=1", auth=auth, timeout=10).json()["data"]
            return {row["hostname"]: row["status"] for row in rows if row["hostname"].startswith(settings.stack)}

        assert wait_for(lambda: any(dashboard().values()), 30, "the dashboard to show the worker online")

        # The worker powers off when idle; it leaves no pidbox queue or subscription behind.
        assert any("pidbox" in q for q in stack_queues(settings))
        worker.wait(60)
        assert not any("worker" in q for q in stack_queues(settings))
        wait_for(lambda: not any(up for host, up in dashboard().items() if "-worker-" in host), 30,
                 "the dashboard to show the worker gone")
    # With Flower stopped too, only the service's own queues remain, and no subscriptions.
    assert stack_queues(settings) == set(), stack_queues(settings)
    assert subscriptions(settings) == []


def test_sweeper_removes_what_a_killed_worker_left(local_aws, tmp_path):
    from daas import tasks

    settings = make_settings(local_aws, tmp_path)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        worker = stack.start_worker()
        wait_for(lambda: any("pidbox" in q for q in stack_queues(settings)) and subscriptions(settings), 60,
                 "the worker's pidbox queue and its subscription")
        worker.kill()  # SIGKILL: no chance to clean up
        worker.wait()
        assert any("pidbox" in q for q in stack_queues(settings))
        # What a killed `inspect` call and a killed event receiver leave: a reply queue, an event
        # queue filling up; a live receiver's queue (drained) stays.
        sqs = aws.client("sqs", settings)
        reply = sqs.create_queue(QueueName=f"{uuid.uuid4()}-reply-{settings.stack}-pidbox")["QueueUrl"]
        stale = sqs.create_queue(QueueName=f"{settings.stack}-celeryev-{uuid.uuid4()}")["QueueUrl"]
        live = sqs.create_queue(QueueName=f"{settings.stack}-celeryev-{uuid.uuid4()}")["QueueUrl"]
        for start in range(0, 30, 10):
            sqs.send_message_batch(QueueUrl=stale, Entries=[{"Id": str(i), "MessageBody": "heartbeat"}
                                                           for i in range(start, start + 10)])
        removed = tasks.sweep(settings, live_pidboxes=set(), reply_age=0, pidbox_age=0)
    assert any(f"worker-{worker.pid}" in name for name in removed)
    assert {reply.rsplit("/", 1)[1], stale.rsplit("/", 1)[1]} <= set(removed)
    assert stack_queues(settings) == {live.rsplit("/", 1)[1]} and subscriptions(settings) == []
