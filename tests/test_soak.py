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
    assert report["recovery_s"]["worker"] <= 30
    assert (tmp_path / "soak.json").exists() and (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


def test_a_task_redone_after_its_worker_was_killed_before_the_ack_is_not_a_task_run_twice():
    """A SIGKILL between a task's success and the deletion of its message makes SQS deliver it again
    (at-least-once); a live worker's task delivered again while it runs is what must never happen."""
    runs = {"killed-after-success": {"received": [(1.0, 7)], "succeeded": [(2.0, 7), (25.0, 8)]},
            "live-worker-redelivered": {"received": [(1.0, 8)], "succeeded": [(3.0, 8), (24.0, 9)]},
            "once": {"received": [(1.0, 9)], "succeeded": [(1.5, 9)]}}
    assert soak.reruns(runs, kills={7: 2.1}) == (1, 1)
    assert soak.reruns(runs, kills={}) == (2, 0)  # no worker killed: both are runs twice
