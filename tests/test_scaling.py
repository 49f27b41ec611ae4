"""The boot-aware scaling policy (daas.scaling), decided on made-up measurements: no process, no clock."""
from __future__ import annotations

import math

import pytest

from daas.scaling import Fleet, Limits, boot_aware, drain_time

EC2_BOOT, LOCAL_BOOT = 120.0, 5.0
LIMITS = Limits(drain_target=60.0, minimum=0, maximum=20)


def fleet(backlog: int, ready: int = 0, starting: tuple[float, ...] = (), rate: float = 25.0,
          boot: float = EC2_BOOT) -> Fleet:
    return Fleet(backlog=backlog, ready=ready, starting=starting, rate=rate, boot=boot)


def test_drain_time_adds_workers_as_they_arrive():
    assert drain_time(100, 10.0, [0.0]) == 10.0
    assert drain_time(100, 10.0, [0.0, 0.0]) == 5.0
    assert drain_time(100, 10.0, [0.0, 5.0]) == 7.5   # 50 alone, then 50 at 20 a second
    assert drain_time(100, 10.0, [0.0, 20.0]) == 10.0  # done before the second arrives
    assert drain_time(100, 10.0, [30.0]) == 40.0
    assert drain_time(100, 10.0, []) == math.inf


def test_one_warm_worker_keeps_an_upload_it_finishes_within_the_target():
    # The example: 500 images, one warm worker at 25 images/s finishes in 20 s; the old
    # policy asked for 50 workers (20 at the cap) that would boot for two minutes.
    assert boot_aware(fleet(500, ready=1), LIMITS) == 0


def test_the_first_image_launches_one_worker_at_once():
    assert boot_aware(fleet(1), LIMITS) == 1
    assert boot_aware(fleet(500), LIMITS) == 1  # from zero, one worker finishes 500 in 20 s after its boot


def test_a_large_backlog_launches_enough_to_drain_by_the_deadline_and_no_more():
    # 20,000 images, one warm worker, boots of 120 s: the deadline is 240 s (each new worker works at
    # least one boot); the warm one does 3,000 by the time the new ones arrive, the rest takes 6.
    launched = boot_aware(fleet(20_000, ready=1), LIMITS)
    assert launched == 5
    assert drain_time(20_000, 25.0, [0.0] + [EC2_BOOT] * launched) <= 240.0
    assert drain_time(20_000, 25.0, [0.0] + [EC2_BOOT] * (launched - 1)) > 240.0


def test_short_boots_drain_within_the_target_itself():
    launched = boot_aware(fleet(6_000, ready=1, boot=LOCAL_BOOT), LIMITS)
    assert drain_time(6_000, 25.0, [0.0] + [LOCAL_BOOT] * launched) <= LIMITS.drain_target
    assert drain_time(6_000, 25.0, [0.0] + [LOCAL_BOOT] * (launched - 1)) > LIMITS.drain_target


def test_no_worker_is_launched_that_would_arrive_after_the_backlog_drains():
    # Three warm workers drain 3,000 images in 40 s: below a deadline anyway, and a new worker
    # (after 120 s) would find nothing left.
    assert boot_aware(fleet(3_000, ready=3), LIMITS) == 0
    # Slow workers: 0.5 images/s each takes 4,000 s; every new worker arrives long before that.
    assert boot_aware(fleet(2_000, ready=1, rate=0.5), LIMITS) == LIMITS.maximum - 1


def test_booting_workers_count_from_when_they_will_arrive():
    alone = boot_aware(fleet(20_000, ready=1), LIMITS)
    # Five launched 100 s ago arrive in 20 s: they do what five new ones would have done, and more.
    assert boot_aware(fleet(20_000, ready=1, starting=(100.0,) * 5), LIMITS) == 0
    # Five launched just now are exactly the five the policy would launch.
    assert boot_aware(fleet(20_000, ready=1, starting=(0.0,) * alone), LIMITS) == 0
    # One overdue boot counts as arriving now, not as never.
    assert boot_aware(fleet(1_000, starting=(500.0,)), LIMITS) == 0


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
