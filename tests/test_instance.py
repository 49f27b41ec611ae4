"""A worker instance runs several consuming processes from one command (daas.instance, issue 19):
each with its own heartbeat, a failed one started again, the instance powered off once, when all
have retired."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from daas import config, fleet, jobs
from daas.instance import PROCESSES_PER_CORE, PROCESSES_PER_CORE_ON_GPU, processes
from tests.conftest import make_settings, send_from_this_process, skimage_photo, wait_for


def _pids(settings: config.Settings) -> set[int]:
    return {parsed[0] for name in fleet.heartbeats(settings) if (parsed := fleet.parse_node(name))}


def test_processes_default_to_four_a_core_and_one_a_core_on_a_gpu():
    assert processes(config.Settings(worker_processes=3)) == 3
    assert processes(config.Settings(device="cpu")) == PROCESSES_PER_CORE * os.cpu_count() == 4 * os.cpu_count()
    assert processes(config.Settings(device="cuda")) == PROCESSES_PER_CORE_ON_GPU * os.cpu_count() == os.cpu_count()
    assert processes(config.Settings(device="cuda", worker_processes=3)) == 3


def test_an_instance_keeps_its_processes_and_powers_off_once_when_all_have_retired(local_aws, tmp_path):
    powered_off = tmp_path / "powered-off"
    settings = make_settings(local_aws, tmp_path, worker_processes=2, idle_timeout=12.0, visibility_timeout=12,
                             heartbeat_interval=2.0,
                             worker_host="i-0123456789abcdef0",
                             poweroff_command=f"{sys.executable} -c \"open('{powered_off}', 'a').write('off')\"")
    env = {**os.environ, **config.to_env(settings)}
    with open(tmp_path / "instance.log", "wb") as log:
        instance = subprocess.Popen([sys.executable, "-m", "daas", "worker"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(_pids(settings)) == 2, 120, "two worker processes to send heartbeats")
        first = _pids(settings)
        assert instance.pid not in first  # the children consume; the instance process supervises

        # Both take work: a job of 4 chunks is classified.
        send_from_this_process(settings)
        photo = skimage_photo("coffee.png")
        job = jobs.submit(settings.with_(images_per_task=1), [jobs.Upload(f"c{n}.png", photo) for n in range(4)])
        wait_for(lambda: jobs.status(settings, job["job_id"])["status"] == "done", 120, "the job")
        assert {i["label"] for i in jobs.status(settings, job["job_id"])["images"]} == {"espresso"}

        # A child killed is started again: a third process beats, beside the survivor.
        os.kill(min(first), signal.SIGKILL)
        wait_for(lambda: len(_pids(settings) - first) == 1, 120, "the killed process to be replaced")
        assert instance.poll() is None

        # Idle: every child retires (exit 0), and the instance powers off once, by itself.
        assert instance.wait(timeout=180) == 0
        assert powered_off.read_text() == "off"
    finally:
        if instance.poll() is None:
            instance.terminate()
            instance.wait(timeout=60)
    text = (tmp_path / "instance.log").read_text(errors="replace")
    assert "failed (exit -9): starting it again" in text and "every worker process retired" in text
