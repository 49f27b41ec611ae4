"""Spot interruption notices and rebalance recommendations (daas.interruption, issue 19): a worker
that gets one leaves, and what it held is labelled elsewhere within seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from daas import config, fleet, interruption, jobs
from tests.conftest import make_settings, send_from_this_process, skimage_photo, wait_for
from tests.imds import REBALANCE, SPOT, Imds


def test_the_notices_are_read_with_an_imdsv2_token():
    with Imds() as imds:
        assert interruption.ask(imds.url) is None and imds.asked == 2
        imds.post(REBALANCE, {"noticeTime": "2026-12-03T18:00:00Z"})
        assert interruption.ask(imds.url).startswith("rebalance recommendation: ")
        imds.post(SPOT, {"action": "terminate", "time": "2026-12-03T18:02:00Z"})
        assert interruption.ask(imds.url) == 'spot interruption notice: {"action": "terminate", "time": "2026-12-03T18:02:00Z"}'


def test_a_metadata_service_that_fails_is_asked_again_next_round():
    seen, where = [], ["http://127.0.0.1:9"]  # nothing listens there
    watcher = interruption.Watcher(lambda: interruption.ask(where[0]), seen.append, "the instance metadata")
    watcher.check()
    assert watcher.notice is None and not seen
    with Imds() as imds:
        where[0] = imds.url
        imds.post(SPOT, {"action": "stop"})
        watcher.check()
        watcher.check()
    assert watcher.notice.startswith("spot interruption notice") and len(seen) == 1


def _worker(settings: config.Settings, log, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daas", "worker", "--processes", "1"],
                            env={**os.environ, **config.to_env(settings), **env}, stdout=log, stderr=subprocess.STDOUT)


def _records(settings: config.Settings) -> dict[int, dict]:
    found = {}
    for name in fleet.heartbeats(settings):
        record = fleet.read(settings, name)
        if record:
            found[record["pid"]] = record
    return found


def test_a_worker_told_of_an_interruption_mid_task_leaves_and_loses_nothing(local_aws, tmp_path):
    # A visibility timeout of 60 s: a message the leaving worker kept would come back only then.
    settings = make_settings(local_aws, tmp_path, visibility_timeout=60, heartbeat_interval=1.0, idle_timeout=0)
    with Imds() as imds, open(tmp_path / "leaving.log", "wb") as leaving_log, \
            open(tmp_path / "staying.log", "wb") as staying_log:
        leaving = _worker(settings, leaving_log, DAAS_IMDS_ENDPOINT=imds.url)
        staying = _worker(settings, staying_log)
        try:
            wait_for(lambda: {leaving.pid, staying.pid} <= set(_records(settings)), 120, "both workers to beat")
            send_from_this_process(settings)
            photo = skimage_photo("coffee.png")
            job = jobs.submit(settings.with_(images_per_task=1), [jobs.Upload(f"c{n}.png", photo) for n in range(80)])
            wait_for(lambda: _records(settings).get(leaving.pid, {}).get("tasks", 0) >= 1, 60,
                     "the worker to be leaving to have taken work")
            imds.post(SPOT, {"action": "terminate", "time": "2026-12-03T18:02:00Z"})
            noticed = time.monotonic()
            assert leaving.wait(timeout=60) == 0  # a retirement: the instance would power off
            left_after = time.monotonic() - noticed
            wait_for(lambda: jobs.status(settings, job["job_id"])["status"] == "done", 60, "the job")
            done_after = time.monotonic() - noticed
            images = jobs.status(settings, job["job_id"])["images"]
            assert len(images) == 80 and {image["label"] for image in images} == {"espresso"}
            # Within the round that sees the notice and the poll in flight, never the visibility timeout.
            assert left_after < config.IMDS_POLL + 15 and done_after < 30, (left_after, done_after)
            assert staying.poll() is None and leaving.pid not in _records(settings)  # it took its record along
        finally:
            for worker in (leaving, staying):
                if worker.poll() is None:
                    worker.terminate()
                    worker.wait(timeout=60)
    text = (tmp_path / "leaving.log").read_text(errors="replace")
    assert "spot interruption notice" in text and "leaving (no new messages" in text


def test_the_goodbye_is_in_the_heartbeat_record(local_aws, tmp_path):
    from daas import lifecycle

    settings = make_settings(local_aws, tmp_path)
    node = fleet.node_name(settings, 4242, "i-0123456789abcdef0")
    heartbeat = lifecycle.Heartbeat(settings, node)
    heartbeat.ready()
    assert "leaving" not in fleet.read(settings, fleet.record_name(settings, node))
    heartbeat.goodbye("spot interruption notice: {}")
    assert fleet.read(settings, fleet.record_name(settings, node))["leaving"] == "spot interruption notice: {}"
    heartbeat.forget()
    assert fleet.read(settings, fleet.record_name(settings, node)) is None
