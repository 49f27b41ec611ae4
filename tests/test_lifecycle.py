"""The decisions that keep the service up, as pure functions with made-up clocks (milliseconds each):
when a process is stalled, when a worker retires, which workers the controller ends, what the
health check blames, and how the files that grow forever are kept bounded."""
import json
import time

import pytest

from daas import config, fleet, health, lifecycle, timeline, watchdog
from daas.config import REMEMBER_LAUNCHES
from daas.providers import instance_states
from daas.supervisor import rotate_logs
from tests.conftest import make_settings


# -- the watchdog ----------------------------------------------------------------------------------
@pytest.mark.parametrize("now, last_poll, tasks, expected", [
    (100, 95, [], 5),                   # polled 5 s ago
    (100, None, [], 10),                # never polled since it became ready at 90
    (100, 20, [80], 0),                 # a task running for 20 s is progress
    (500, 140, [150], 360),             # a task running for 350 s (limit 300) is not
])
def test_a_process_is_stalled_for_the_time_since_its_last_poll_unless_a_task_runs(now, last_poll, tasks, expected):
    assert watchdog.stalled_for(now, 90, last_poll, tasks, task_time_limit=300) == expected


def test_the_watchdog_gives_a_starting_process_its_startup_time(monkeypatch):
    dog = watchdog.Watchdog("q", stall_timeout=60, task_time_limit=300)
    monkeypatch.setattr(watchdog.time, "time", lambda: dog.started + watchdog.STARTUP_TIMEOUT - 1)
    assert dog.stalled_for() <= dog.stall_timeout  # still loading its model: not stalled
    monkeypatch.setattr(watchdog.time, "time", lambda: dog.started + watchdog.STARTUP_TIMEOUT + 1)
    assert dog.stalled_for() > dog.stall_timeout


def test_sd_notify_reaches_an_abstract_socket(monkeypatch):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0daas-test-notify")
        monkeypatch.setenv("NOTIFY_SOCKET", "@daas-test-notify")
        assert watchdog.notify("WATCHDOG=1")
        assert listener.recv(64) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not watchdog.notify("READY=1")  # no systemd: nothing to do


def test_a_hanging_duty_does_not_hold_up_another_duty():
    """Issue 16: a heartbeat PUT that hangs must not delay the visibility extension. Each duty has
    a thread of its own: the one beside a duty that never returns still runs every round."""
    import threading

    hang, rounds = threading.Event(), []
    dog = watchdog.Watchdog("q", stall_timeout=60, task_time_limit=300, duties=[
        watchdog.Duty(0.05, hang.wait), watchdog.Duty(0.1, lambda: rounds.append(time.monotonic()))])
    dog.start_duties()
    time.sleep(1.0)
    dog.stop()
    hang.set()
    assert len(rounds) >= 5, rounds  # 10 on an idle machine
    assert max(b - a for a, b in zip(rounds, rounds[1:])) < 0.5


@pytest.mark.parametrize("visibility_timeout", [8, 20, 60, 300])
def test_a_duty_call_gives_up_in_time_for_the_next_extension_within_half_the_timeout(visibility_timeout):
    """A call of the visibility extension gives up within a round (connect, read, no retry), and
    the next round follows at once: a message is extended again at most half a timeout after its
    previous extension, however slow S3 or SQS are (the previous round started before it)."""
    from daas import aws

    cfg = config.Settings(visibility_timeout=visibility_timeout, aws_endpoint="http://127.0.0.1:9")
    client_config = aws.duty_client("sqs", cfg, cfg.extend_every).meta.config
    assert client_config.retries["total_max_attempts"] == 1
    longest_call = client_config.connect_timeout + client_config.read_timeout
    assert longest_call <= cfg.extend_every
    assert cfg.extend_every + longest_call <= cfg.visibility_timeout / 2
    heartbeat = aws.duty_client("s3", cfg, cfg.heartbeat_interval).meta.config
    assert heartbeat.connect_timeout + heartbeat.read_timeout <= cfg.heartbeat_interval


# -- retirement ------------------------------------------------------------------------------------
@pytest.mark.parametrize("now, last_busy, idle, lifetime, expected", [
    (100, 50, 60, 0, None),
    (100, 40, 60, 0, "idle for 60 s"),
    (100, 40, 0, 0, None),                                   # idle timeout 0: never idles out
    (7300, 7290, 60, 7200, "served for 2.0 h (DAAS_MAX_LIFETIME)"),
])
def test_a_worker_retires_when_idle_or_old(now, last_busy, idle, lifetime, expected):
    assert lifecycle.retirement(now, last_busy, 0, idle_timeout=idle, max_lifetime=lifetime) == expected


# -- which workers the controller ends -------------------------------------------------------------
def test_workers_that_never_joined_stopped_beating_or_are_too_old_are_ended():
    now = 10_000.0
    workers = [fleet.Worker("young", now - 30), fleet.Worker("never-joined", now - 700),
               fleet.Worker("healthy", now - 5000), fleet.Worker("silent", now - 5000),
               fleet.Worker("ancient", now - 90_000)]
    beats = {"healthy": now - 10, "silent": now - 200, "ancient": now - 5}
    ended = fleet.verdicts(workers, beats, now, join_timeout=600, stale_after=45, max_lifetime=86_400)
    assert set(ended) == {"never-joined", "silent", "ancient"}
    assert "never joined" in ended["never-joined"] and "200 s" in ended["silent"]


def test_heartbeats_are_keyed_by_the_worker_their_node_belongs_to():
    beats = {"daas-worker-12@i-0abc": 5.0, "daas-worker-13@i-0abc": 9.0, "daas-worker-7@laptop": 3.0, "junk": 1.0}
    owner = fleet.owners(beats, lambda pid, host: host if host.startswith("i-") else None)
    assert owner == {"daas-worker-12@i-0abc": "i-0abc", "daas-worker-13@i-0abc": "i-0abc",
                     "daas-worker-7@laptop": None, "junk": None}
    by_instance = fleet.latest_by_worker(beats, owner)
    assert by_instance == {"i-0abc": 9.0}
    assert fleet.parse_node("daas-prod-worker-12@ip-10-0-0-1") == (12, "ip-10-0-0-1")
    # Records are named <principal>/<node>: on EC2 the principal is <role id>:<instance id>.
    assert fleet.parse_node("AROAEXAMPLE:i-0abc/daas-worker-12@i-0abc") == (12, "i-0abc")


def test_recent_launches_count_until_describe_instances_lists_them():
    now = 1000.0
    described = {"i-a": ("running", 900.0), "i-b": ("terminated", 950.0)}
    remembered = {"i-b": 950.0, "i-c": 990.0, "i-old": now - REMEMBER_LAUNCHES - 1}
    live = instance_states(described, remembered, now)
    # i-c is not listed yet: counted as pending. i-b is listed as terminated: not counted.
    assert live == {"i-a": ("running", 900.0), "i-c": ("pending", 990.0)}


# -- the health check ------------------------------------------------------------------------------
def test_health_blames_beat_or_the_controller():
    now = 1000.0
    assert health.diagnose(None, None, 5, now)[0] == "beat"  # nothing ever ticked
    beat = {"t": now - 1}
    assert health.diagnose(None, beat, 5, now)[0] == "controller"
    assert health.diagnose({"t": now - 14}, beat, 5, now) is None  # 14 s < 3 intervals
    assert health.diagnose({"t": now - 14}, beat, 5, now + 2)[0] == "controller"


def test_the_control_planes_records_are_shared_through_the_output_bucket(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, scale_interval=5)
    assert health.read(settings, health.TICK) is None and health.problem(settings)[0] == "beat"
    health.record(settings, health.BEAT, {"t": time.time()})
    health.record(settings, health.TICK, {"t": time.time()})
    assert health.problem(settings.with_(state_dir=tmp_path / "another-host")) is None


# -- what grows forever ----------------------------------------------------------------------------
def test_the_timeline_rotates_and_reads_across_both_files(tmp_path):
    for i in range(40):
        timeline.append(tmp_path, {"t": float(i), "visible": i}, rotate_bytes=500)
    assert (tmp_path / (timeline.FILE + ".1")).exists()
    assert sum(len(p.read_bytes()) for p in tmp_path.iterdir()) < 2_000  # two generations at most
    records = timeline.read(tmp_path)
    assert [r["t"] for r in records] == sorted(r["t"] for r in records) and records[-1]["t"] == 39.0
    (tmp_path / timeline.FILE).open("a").write('{"t": 40, "vis')  # a line being written
    assert timeline.read(tmp_path)[-1]["t"] == 39.0


def test_logs_are_rotated_in_place_so_their_writers_go_on(tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "ab") as writer:
        writer.write(b"x" * 2000)
        writer.flush()
        rotate_logs(tmp_path, limit=1000)
        writer.write(b"after\n")
    assert log.read_bytes() == b"after\n" and (tmp_path / "worker.log.1").stat().st_size == 2000


def test_a_reply_message_round_trips():
    from daas import replies

    body = json.loads(replies.reply_message("job/img", [{"id": "img", "label": "espresso"}]))
    assert body == {"key": "job/img", "results": [{"id": "img", "label": "espresso"}]}
