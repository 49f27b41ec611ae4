"""The boot-aware scaling policy (daas.scaling), decided on made-up measurements: no process, no clock.

Work is in tasks (queue messages); a worker here finishes 2.5 tasks (25 images) a second."""
from __future__ import annotations

import math

import pytest

from daas.scaling import Fleet, Inflow, Limits, boot_aware, drain_time, surplus

EC2_BOOT, LOCAL_BOOT, RATE = 120.0, 5.0, 2.5
LIMITS = Limits(drain_target=60.0, minimum=0, maximum=20)


def fleet(backlog: int, ready: int = 0, starting: tuple[float, ...] = (), rate: float = RATE,
          boot: float = EC2_BOOT, inflow: float = 0.0) -> Fleet:
    return Fleet(backlog=backlog, ready=ready, starting=starting, rate=rate, boot=boot, inflow=inflow)


def test_drain_time_adds_workers_as_they_arrive():
    assert drain_time(100, 10.0, [0.0]) == 10.0
    assert drain_time(100, 10.0, [0.0, 0.0]) == 5.0
    assert drain_time(100, 10.0, [0.0, 5.0]) == 7.5   # 50 alone, then 50 at 20 a second
    assert drain_time(100, 10.0, [0.0, 20.0]) == 10.0  # done before the second arrives
    assert drain_time(100, 10.0, [30.0]) == 40.0
    assert drain_time(100, 10.0, []) == math.inf


def test_drain_time_counts_what_keeps_arriving():
    assert drain_time(100, 10.0, [0.0], inflow=5.0) == 20.0
    assert drain_time(100, 10.0, [0.0], inflow=10.0) == math.inf  # never catches up
    assert drain_time(0, 10.0, [0.0], inflow=10.0) == 0.0          # keeps up, nothing waits
    assert drain_time(0, 10.0, [10.0, 10.0], inflow=15.0) == 40.0  # 150 pile up, then 5 a second


def test_one_warm_worker_keeps_an_upload_it_finishes_within_the_target():
    # The example: 500 images (50 tasks), one warm worker at 25 images/s finishes in 20 s; the
    # old policy asked for 50 workers (20 at the cap) that would boot for two minutes.
    assert boot_aware(fleet(50, ready=1), LIMITS) == 0


def test_the_first_task_launches_one_worker_at_once():
    assert boot_aware(fleet(1), LIMITS) == 1
    assert boot_aware(fleet(50), LIMITS) == 1  # from zero, one worker finishes 50 in 20 s after its boot


def test_a_large_backlog_launches_enough_to_drain_by_the_deadline_and_no_more():
    # 2,000 tasks, one warm worker, boots of 120 s, each new worker to work at least one boot: the
    # deadline is 240 s; the warm one does 300 by the time the new ones arrive, the rest takes 6.
    launched = boot_aware(fleet(2_000, ready=1), LIMITS, work_per_boot=1.0)
    assert launched == 5
    assert drain_time(2_000, RATE, [0.0] + [EC2_BOOT] * launched) <= 240.0
    assert drain_time(2_000, RATE, [0.0] + [EC2_BOOT] * (launched - 1)) > 240.0
    # Asking more work of each launches fewer for the same backlog.
    assert boot_aware(fleet(2_000, ready=1), LIMITS, work_per_boot=2.0) < launched


def test_short_boots_drain_within_the_target_itself():
    launched = boot_aware(fleet(600, ready=1, boot=LOCAL_BOOT), LIMITS)
    assert drain_time(600, RATE, [0.0] + [LOCAL_BOOT] * launched) <= LIMITS.drain_target
    assert drain_time(600, RATE, [0.0] + [LOCAL_BOOT] * (launched - 1)) > LIMITS.drain_target


def test_workers_are_launched_to_keep_up_with_a_stream():
    # Nothing waits yet, but 9 tasks a second arrive and the warm worker does 2.5. Four workers would
    # keep up, but not work off the 780 tasks that pile up while the new ones boot: with a deadline
    # of three boots (360 s) a fifth does; with two (240 s), the 780 must go in 120 s: seven.
    assert boot_aware(fleet(1, ready=1, inflow=9.0), LIMITS, work_per_boot=2.0) == 4
    assert boot_aware(fleet(1, ready=1, inflow=9.0), LIMITS, work_per_boot=1.0) == 6
    assert boot_aware(fleet(1, ready=4, inflow=9.0), LIMITS, work_per_boot=2.0) == 0


def test_no_worker_is_launched_that_would_arrive_after_the_backlog_drains():
    # Three warm workers drain 300 tasks in 40 s: below a deadline anyway, and a new worker (after
    # 120 s) would find nothing left.
    assert boot_aware(fleet(300, ready=3), LIMITS) == 0
    # Slow workers: 0.01 tasks/s each takes 20,000 s; every new worker arrives long before that.
    assert boot_aware(fleet(200, ready=1, rate=0.01), LIMITS) == LIMITS.maximum - 1


def test_booting_workers_count_from_when_they_will_arrive():
    alone = boot_aware(fleet(2_000, ready=1), LIMITS, work_per_boot=1.0)
    # Five launched 100 s ago arrive in 20 s: they do what five new ones would have done, and more.
    assert boot_aware(fleet(2_000, ready=1, starting=(100.0,) * 5), LIMITS, work_per_boot=1.0) == 0
    # Those launched just now are exactly the ones the policy would launch.
    assert boot_aware(fleet(2_000, ready=1, starting=(0.0,) * alone), LIMITS, work_per_boot=1.0) == 0
    # One overdue boot counts as arriving now, not as never.
    assert boot_aware(fleet(100, starting=(500.0,)), LIMITS) == 0


@pytest.mark.parametrize("limits, current, expected", [
    (Limits(60.0, minimum=0, maximum=4), 1, 3),   # capped at the maximum
    (Limits(60.0, minimum=0, maximum=4), 4, 0),   # already there
    (Limits(60.0, minimum=3, maximum=20), 0, 3),  # the minimum with no backlog
    (Limits(60.0, minimum=5, maximum=2), 0, 2),   # the maximum wins over the minimum
])
def test_limits(limits, current, expected):
    backlog = 100_000 if limits.minimum == 0 else 0
    assert boot_aware(fleet(backlog, ready=current), limits) == expected


def test_no_backlog_launches_nothing_and_scale_in_is_left_to_idle_workers():
    assert boot_aware(fleet(0, ready=10), LIMITS) == 0
    assert boot_aware(fleet(0), LIMITS) == 0


def test_inflow_is_a_steady_growth_of_the_backlog_plus_what_the_busy_workers_do():
    inflow, clock, window = Inflow(), 1000.0, Inflow.WINDOW
    assert inflow.update(clock, backlog=0, capacity=5.0, rate=RATE) == 0.0  # nothing to compare with yet
    # Each window 40 more tasks wait while two workers (5 a second) are busy: 13 a second arrive.
    assert inflow.update(clock + window, backlog=40, capacity=5.0, rate=RATE) == 0.0  # one window is not a stream
    assert inflow.update(clock + window + 1, backlog=45, capacity=5.0, rate=RATE) == 0.0  # within a window: kept
    assert inflow.update(clock + 2 * window, backlog=80, capacity=5.0, rate=RATE) == pytest.approx(13.0)
    # The backlog stops growing: the workers keep up, nothing more is asked of the policy.
    assert inflow.update(clock + 3 * window, backlog=75, capacity=5.0, rate=RATE) == 0.0
    # A growth under a quarter of one worker's rate is noise.
    inflow.update(clock + 4 * window, backlog=78, capacity=5.0, rate=RATE)
    assert inflow.update(clock + 5 * window, backlog=81, capacity=5.0, rate=RATE) == 0.0


def test_one_burst_is_not_a_stream():
    inflow, clock = Inflow(), 1000.0
    inflow.update(clock, backlog=0, capacity=0.0, rate=RATE)
    inflow.update(clock + Inflow.WINDOW, backlog=100, capacity=0.0, rate=RATE)  # 100 tasks at once
    assert inflow.update(clock + 2 * Inflow.WINDOW, backlog=75, capacity=5.0, rate=RATE) == 0.0


def test_a_steady_load_spread_over_too_many_workers_retires_the_least_busy():
    # Five workers each 20% busy: one worth of load; two carry it at half their capacity.
    shares = {"a": 0.2, "b": 0.25, "c": 0.15, "d": 0.2, "e": 0.2}
    assert surplus(shares, backlog=0, starting=0, target=0.75) == ["c", "a", "d"]  # least busy first
    assert surplus(shares, backlog=0, starting=0, target=0.75, minimum=4) == ["c"]
    # The rest stay at most `target` busy: 1.75 workers' worth needs three at 0.75.
    assert len(surplus({"a": 0.35, "b": 0.35, "c": 0.35, "d": 0.35, "e": 0.35}, 0, 0, target=0.75)) == 2


def test_nothing_is_retired_while_the_fleet_changes_or_drains_a_backlog():
    busy = {"a": 0.1, "b": 0.1}
    assert surplus(busy, backlog=0, starting=0) == ["a"]
    assert surplus(busy, backlog=3, starting=0) == []          # a burst being drained needs them all
    assert surplus(busy, backlog=0, starting=1) == []          # a launch in flight: the policy wanted more
    assert surplus({"a": 0.1, "b": None}, 0, 0) == []          # one not measured over a whole window
    assert surplus({"a": 0.0}, 0, 0) == [] and surplus({}, 0, 0) == []  # the last one idles out itself
    assert surplus({"a": 0.9, "b": 0.9}, 0, 0) == []           # both needed
