"""Surplus retirement (daas.autoscale.retire_surplus, daas.scaling.surplus): the controller asks
workers a steady load no longer needs to retire; they leave without losing an image, and the rest
go on. Real worker processes on the local endpoint; the controller's housekeeping step called here."""
from __future__ import annotations

import threading
import time

from daas import aws, fleet, jobs
from daas.autoscale import retire_surplus
from daas.observed import Observed
from daas.providers import LocalProvider
from daas.control import learn_worker_rates
from tests.conftest import make_settings, send_from_this_process, skimage_photo, wait_for
from tests.test_interruption import _records, _worker


def _housekeeping(settings, provider, seen) -> list[str]:
    """What housekeeping does after ending broken workers: read the live records, retire the surplus."""
    live = set(fleet.heartbeats(settings))
    return retire_surplus(settings, learn_worker_rates(settings, live, provider, seen), provider, seen)


def _markers(settings) -> list[str]:
    listed = aws.client("s3", settings).list_objects_v2(Bucket=settings.output_bucket, Prefix=fleet.RETIRE_PREFIX)
    return [obj["Key"] for obj in listed.get("Contents", [])]


def test_a_light_steady_load_keeps_one_worker_and_the_others_leave(local_aws, tmp_path):
    # No idle timeout: a trickle shared by three workers would keep them all (none ever idles),
    # so only the controller's request can make two of them leave.
    settings = make_settings(local_aws, tmp_path, heartbeat_interval=1.0, idle_timeout=0, visibility_timeout=60)
    logs = [open(tmp_path / f"worker{n}.log", "wb") for n in range(3)]
    workers = [_worker(settings, log) for log in logs]
    provider, seen = LocalProvider(settings), Observed(settings)
    submitted, stop = [], threading.Event()
    photo = skimage_photo("coffee.png")

    def trickle():
        while not stop.is_set():
            submitted.append(jobs.submit(settings, [jobs.Upload("coffee.png", photo)])["job_id"])
            stop.wait(0.5)

    feeder = threading.Thread(target=trickle, daemon=True)
    try:
        wait_for(lambda: {w.pid for w in workers} <= set(_records(settings)), 120, "three workers to beat")
        send_from_this_process(settings)
        feeder.start()
        assert _housekeeping(settings, provider, seen) == []  # nothing measured over a window yet
        time.sleep(4)
        retired = _housekeeping(settings, provider, seen)
        assert len(retired) == 2, retired
        # Until those asked have left, the fleet is changing: nobody else is asked.
        assert _housekeeping(settings, provider, seen) == [] and len(_markers(settings)) == 2
        leaving = [w for w in workers if str(w.pid) in retired]
        staying = next(w for w in workers if str(w.pid) not in retired)
        for worker in leaving:
            assert worker.wait(timeout=60) == 0  # a retirement: on EC2 the instance powers off
        time.sleep(2)
        assert staying.poll() is None
        stop.set()
        feeder.join(timeout=10)
        wait_for(lambda: all(jobs.status(settings, job)["status"] == "done" for job in submitted), 60, "every job")
        assert len(submitted) >= 10
        assert {jobs.status(settings, job)["images"][0]["label"] for job in submitted} == {"espresso"}
        # The leavers' requests are forgotten once they are gone; the one left is not asked again.
        assert _housekeeping(settings, provider, seen) == [] and _markers(settings) == []
    finally:
        stop.set()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=60)
        for log in logs:
            log.close()
    for worker in leaving:
        text = (tmp_path / f"worker{workers.index(worker)}.log").read_text(errors="replace")
        assert "asked to retire by the controller: 1 of 3 workers carry the load" in text
        assert "leaving (no new messages" in text
