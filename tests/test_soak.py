"""The soak benchmark's short version: `python -m daas up` for 4 minutes under bursts of the
original client, uploads, bad input, idle gaps and injected faults (daas/bench/soak.py).

It lives through several housekeeping runs and a scale-to-zero cycle, with a busy worker, the
controller, the web tier and beat killed, the controller stalled and Flower stopped for 30 s under
load (it must catch up on its event queue, which housekeeping must leave alone), and asserts what matters:
nothing lost or stuck, nothing wrong, no live worker's task run twice, every fault recovered (a
killed worker's images within 30 s), and not one ERROR or CRITICAL line in any log.
"""
from daas.bench import soak


def test_four_minutes_of_load_and_faults_lose_nothing_and_log_no_error(tmp_path):
    report = soak.run(tmp_path, minutes=4)
    print(soak.format_report(report))
    images = report["images"]
    assert report["drained"], "every accepted image gets its result, every malformed message is reaped"
    assert images["lost"] == images["stuck"] == images["wrong"] == images["requests failed twice"] == 0
    assert report["cycles"] >= 3 and report["ran_s"] >= 200
    assert images["right"] >= 3 * soak.BURST and images["sync answered 504"] == 0
    assert images["bad, rejected at the edge"] > 0 and images["bad, error result"] > 0
    assert report["run_twice"] == 0
    assert report["error_lines"] == []
    assert {"up", "web", "controller", "beat", "flower", "workers", "aws"} <= set(report["logs_checked"])
    assert report["housekeeping_runs"] >= 3 and report["scale_to_zero_cycles"] >= 1
    kinds = {fault["kind"] for fault in report["faults"]}
    assert {"worker", "controller", "stall", "malformed message", "flower"} <= kinds
    assert all(fault["recovery_s"] is not None for fault in report["faults"]), report["faults"]
    assert report["recovery_s"]["worker"] <= 30, [f for f in report["faults"] if f["kind"] == "worker"]
    assert (tmp_path / "soak.json").exists() and (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


def test_a_task_redone_after_its_worker_was_killed_before_the_ack_is_not_a_task_run_twice():
    """A SIGKILL between a task's success and the deletion of its message makes SQS deliver it again
    (at-least-once); a live worker's task delivered again while it runs is what must never happen."""
    runs = {"killed-after-success": {"received": [(1.0, 7)], "succeeded": [(2.0, 7), (25.0, 8)]},
            "live-worker-redelivered": {"received": [(1.0, 8)], "succeeded": [(3.0, 8), (24.0, 9)]},
            "once": {"received": [(1.0, 9)], "succeeded": [(1.5, 9)]}}
    assert soak.reruns(runs, kills={7: 2.1}) == (1, 1)
    assert soak.reruns(runs, kills={}) == (2, 0)  # no worker killed: both are runs twice


def test_a_slow_recovery_from_a_worker_kill_is_told_with_what_it_waited_on():
    """A worker recovery over the bound must say what it waited on, in CI's output: when the killed
    worker took its task and when another took it again, who stopped consuming, the scaler's ticks
    and the local endpoint's longest silence (a stalled machine shows there)."""
    from datetime import datetime, timezone

    killed = datetime(2026, 12, 4, 14, 0, 0).timestamp()

    def access_line(seconds: float) -> str:
        stamp = datetime.fromtimestamp(killed + seconds, timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
        return f'[{stamp}] 127.0.0.1 "POST / HTTP/1.1" 200 2 3ms "AmazonSQS.ReceiveMessage" "pycurl"'

    runs = {"orphan": {"received": [(killed - 0.5, 7), (killed + 33.0, 8)], "succeeded": [(killed + 33.2, 8)]},
            "done before": {"received": [(killed - 2.0, 7)], "succeeded": [(killed - 1.9, 7)]}}
    logs = {"aws": "\n".join(access_line(s) for s in (1, 2, 3, 18, 19, 33)),
            "workers": "[2026-12-04 14:00:25,000: INFO/MainProcess 8] idle for 20 s: no longer consuming; "
                       "shutting down once the last poll is over"}
    story = soak.worker_story(runs, 7, killed, killed + 33.2, logs, [{"t": killed + 5.0}, {"t": killed + 30.0}],
                              soak.answer_times(logs["aws"]))
    assert story["orphans"] == [{"taken": -0.5, "taken_again": 33.0, "labelled": 33.2}]
    assert story["endpoint_silence_s"] == 15.0 and story["scaler_ticks"] == [5.0, 30.0]
    assert [line[1:24] for line in story["stopped_consuming"]] == ["2026-12-04 14:00:25,000"]
    assert soak.longest_silence(soak.answer_times("no times in this log"), killed, killed + 10) is None
