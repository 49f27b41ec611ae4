"""The kombu event-loop fix in daas/transport.py, on a real kombu Hub."""
from kombu.asynchronous.hub import Hub

import daas.transport  # noqa: F401  (applies the fix)


def test_work_scheduled_by_a_timer_is_not_left_waiting_for_the_next_poll():
    hub = Hub()
    ran = []
    # A timer callback that schedules follow-up work, as kombu's SQS client does for its next receive.
    hub.call_later(0, lambda: hub.call_soon(lambda: ran.append("receive")))
    delay = hub.fire_timers()
    assert delay == 0, "work is ready: the loop must poll without waiting"
    for item in hub._pop_ready():
        item()
    assert ran == ["receive"]


def test_an_idle_loop_still_sleeps_until_its_next_timer():
    hub = Hub()
    hub.call_later(5, lambda: None)
    assert hub.fire_timers() > 0
    hub.close()
