"""Flower and remote control over the real SQS broker, with SNS fanout (daas/transport.py)."""
import subprocess
import sys
import time
import uuid

import requests

from daas import aws
from daas.bench.soak import ERROR_LINE
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
        second = subprocess.run([sys.executable, "-m", "daas", "flower"], env=child_env(settings), capture_output=True,
                                text=True, timeout=60)  # its port is taken: one line, not an OSError's traceback
        assert second.returncode == 1 and second.stderr.startswith(
            f"daas flower: port {settings.flower_port} is in use"), second.stderr
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
    # ...and Flower ended quietly: its event thread outlived the deletion of its queue at exit
    # without an error line (it once logged "Failed to capture events: ... NonExistentQueue").
    flower_log = (tmp_path / "logs" / "flower.log").read_text(errors="replace")
    assert not [line for line in flower_log.splitlines() if ERROR_LINE.search(line)], flower_log[-3000:]


def test_sweeper_removes_what_a_killed_worker_left_and_keeps_live_queues_however_full(local_aws, tmp_path):
    from daas import control, leases

    settings = make_settings(local_aws, tmp_path, queue_lease_interval=0.5)  # leases expire after 2.5 s
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        worker = stack.start_worker()
        wait_for(lambda: any("pidbox" in q for q in stack_queues(settings)) and subscriptions(settings), 60,
                 "the worker's pidbox queue and its subscription")
        worker.kill()  # SIGKILL: no chance to clean up
        worker.wait()
        assert any("pidbox" in q for q in stack_queues(settings))
        # What a killed `inspect` call and a killed event receiver leave (leases renewed long ago),
        # and a live receiver's queue far behind: 100 events waiting, its lease renewed just now.
        sqs, old = aws.client("sqs", settings), leases.tags(settings.stack, now=time.time() - 60)
        reply = sqs.create_queue(QueueName=f"{uuid.uuid4()}-reply-{settings.stack}-pidbox", tags=old)["QueueUrl"]
        stale = sqs.create_queue(QueueName=f"{settings.stack}-celeryev-{uuid.uuid4()}", tags=old)["QueueUrl"]
        live = sqs.create_queue(QueueName=f"{settings.stack}-celeryev-{uuid.uuid4()}", tags=old)["QueueUrl"]
        for start in range(0, 100, 10):
            sqs.send_message_batch(QueueUrl=live, Entries=[{"Id": str(i), "MessageBody": "heartbeat"}
                                                          for i in range(start, start + 10)])
        time.sleep(settings.queue_lease_expiry + 0.5)  # the killed worker's pidbox lease runs out
        leases.renew(sqs, live, settings.stack)
        removed = control.sweep(settings)
    assert any(f"worker-{worker.pid}" in name for name in removed)
    assert {reply.rsplit("/", 1)[1], stale.rsplit("/", 1)[1]} <= set(removed)
    assert stack_queues(settings) == {live.rsplit("/", 1)[1]} and subscriptions(settings) == []


def test_two_stacks_whose_names_end_alike_sweep_only_their_own_queues(local_aws, tmp_path):
    """`prod-<x>` beside `<x>` in one account: each stack's housekeeping runs while both have a live
    worker; both keep their workers' queues (the old name pattern made `<x>` delete `prod-<x>`'s)."""
    from daas import control

    base = f"t{uuid.uuid4().hex[:8]}"
    stacks = [make_settings(local_aws, tmp_path / name, stack=name, queue_lease_interval=0.5, heartbeat_interval=0.5)
              for name in (base, f"prod-{base}")]
    with Stack(stacks[0], log_dir=tmp_path / "a") as first, Stack(stacks[1], log_dir=tmp_path / "b") as second:
        workers = [first.start_worker(), second.start_worker()]
        for settings in stacks:
            wait_for(lambda: any("pidbox" in q for q in stack_queues(settings)), 60, f"{settings.stack}'s pidbox")
        pidboxes = {s.stack: {q for q in stack_queues(s) if q.endswith(f"-{s.stack}-pidbox")} for s in stacks}
        deadline = time.monotonic() + 3 * stacks[0].queue_lease_expiry
        while time.monotonic() < deadline:  # several sweeps, each past a whole lease expiry
            for settings in stacks:
                assert control.sweep(settings) == [], settings.stack
            time.sleep(0.5)
        for settings in stacks:
            assert pidboxes[settings.stack] <= stack_queues(settings)
        assert all(worker.poll() is None for worker in workers)


def test_the_sweeper_reads_every_page_of_the_queue_listing(local_aws, tmp_path):
    from daas import control, leases

    settings = make_settings(local_aws, tmp_path)
    sqs, old = aws.client("sqs", settings), leases.tags(settings.stack, now=time.time() - 3600)
    names = {f"{settings.stack}-celeryev-{uuid.uuid4()}" for _ in range(12)}
    for name in names:
        sqs.create_queue(QueueName=name, tags=old)
    assert set(control.sweep(settings, page_size=5)) == names


def test_a_queue_is_an_orphan_only_when_its_own_stack_stopped_renewing_it():
    from daas.leases import orphaned, tags

    now = 10_000.0
    fresh, old = tags("daas", now=now - 10), tags("daas", now=now - 400)
    assert not orphaned("daas", "daas-celeryev-x", fresh, None, now, expires_after=300)
    assert orphaned("daas", "daas-celeryev-x", old, None, now, expires_after=300)
    # Another stack's queue, however old its lease: never ours.
    assert not orphaned("daas", "w-prod-daas-pidbox", tags("prod-daas", now=0), None, now, expires_after=300)
    # Untagged (an older release, or killed between create and tag): by age, and only when the name
    # cannot be another stack's.
    assert orphaned("daas", "daas-worker-1-h-daas-pidbox", {}, now - 400, now, expires_after=300)
    assert not orphaned("daas", "daas-worker-1-h-daas-pidbox", {}, now - 10, now, expires_after=300)
    assert not orphaned("daas", "prod-daas-worker-1-h-prod-daas-pidbox", {}, 0, now, expires_after=300)
