"""Delivery guarantees with real processes: a killed worker loses no image."""
import os
import signal
import time

from daas import aws
from daas.stack import Stack
from tests.conftest import Service, make_settings, skimage_photo


def test_images_held_by_a_killed_worker_come_back(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, visibility_timeout=5, prefetch_multiplier=4)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        doomed = stack.start_worker("doomed")
        photo = skimage_photo("coffee.png")
        job = service.submit([(f"{i}.png", photo) for i in range(16)]).json()

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
        assert [image["label"] for image in done["images"]] == ["espresso"] * 16
