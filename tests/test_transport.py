"""The kombu event-loop fixes in daas/transport.py, on a real kombu Hub and curl client."""
import logging

from kombu.asynchronous.http import Request
from kombu.asynchronous.http.curl import CurlClient
from kombu.asynchronous.hub import Hub
from vine import promise

import daas.transport  # noqa: F401  (applies the fixes)


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


def test_a_failing_completion_does_not_drop_the_requests_that_finished_with_it(local_aws, caplog):
    """Two requests finish together; the first one's callback raises (as a DeleteMessage answered
    400 does). The second, a consumer's next poll say, must still complete."""
    hub = Hub()
    client = CurlClient(hub)
    completed = []

    def fails(response):
        raise RuntimeError("DeleteMessage answered 400 QueueDoesNotExist")

    client.add_request(Request(f"{local_aws}/moto-api/", on_ready=promise(fails)))
    client.add_request(Request(f"{local_aws}/moto-api/", on_ready=promise(completed.append)))
    # Let curl finish both without reading their results, so that one batch holds both.
    while client._multi.perform()[1]:
        client._multi.select(1.0)
    with caplog.at_level(logging.ERROR, logger="daas.transport"):
        client._process_pending_requests()
    assert [response.code for response in completed] == [200]
    assert "the requests that completed with it go on" in caplog.text
    client.close()
    hub.close()


class _Renews:
    def __init__(self, fails: bool = False):
        self.fails, self.rounds = fails, 0

    def renew_leases(self) -> None:
        self.rounds += 1
        if self.fails:
            raise ConnectionError("the endpoint did not answer")


def test_a_renewal_round_survives_a_failing_channel_and_channels_opened_meanwhile():
    """The lease renewer (one thread per process) must never end: a channel that fails to renew,
    or channels opened on other threads during a round, cost that round at most."""
    import threading

    from daas import transport

    failing, working = _Renews(fails=True), _Renews()
    opened, stop = [], threading.Event()

    def open_channels_meanwhile():
        while not stop.is_set():
            channel = _Renews()
            opened.append(channel)
            with transport._channels_lock:
                transport._channels.add(channel)

    with transport._channels_lock:
        transport._channels.update([failing, working])
    opener = threading.Thread(target=open_channels_meanwhile)
    opener.start()
    try:
        for _ in range(200):
            transport.renew_all()
    finally:
        stop.set()
        opener.join()
        with transport._channels_lock:
            for channel in [failing, working, *opened]:
                transport._channels.discard(channel)
    assert failing.rounds == working.rounds == 200


def test_a_queue_deleted_at_exit_stays_deleted_for_a_consumer_thread_still_running(local_aws, tmp_path):
    """At exit the atexit hook deletes this process's auto-delete queues while Flower's event thread
    may still be receiving from one (a daemon thread: nothing stops it). What a receive in flight
    returns after the deletion, and every later poll, must neither fail (Flower logged "Failed to
    capture events: NonExistentQueue") nor re-create the queue (an orphan until swept)."""
    import socket
    from queue import Empty

    import pytest
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    from daas import aws, broker
    from tests.conftest import make_settings

    settings = make_settings(local_aws, tmp_path)
    options = {**broker.transport_options(settings), "wait_time_seconds": 1}
    sqs = aws.client("sqs", settings)
    name = f"{settings.stack}-events-receiver"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, auto_delete=True)
    with Connection(broker.broker_url(settings), transport=broker.TRANSPORT, transport_options=options) as conn:
        channel = conn.default_channel
        received = []
        with Consumer(channel, [queue], callbacks=[lambda body, message: received.append(body)], no_ack=True):
            Producer(channel).publish({"event": 1}, exchange=queue.exchange, routing_key=name)
            conn.drain_events(timeout=5)
            assert received == [{"event": 1}]
            Producer(channel).publish({"event": 2}, exchange=queue.exchange, routing_key=name)
            in_flight = channel._receive_message(name, 1, 1)["Messages"]  # the receive the deletion overtakes
            channel.delete_auto_queues()
            assert not sqs.list_queues(QueueNamePrefix=name).get("QueueUrls")
            with pytest.raises(Empty):  # the synchronous path (Flower's thread)
                channel._messages_to_python(in_flight, name)
            assert channel._on_messages_ready(None, name, {"Messages": in_flight}) == 0  # the event loop's
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=2)
        assert not sqs.list_queues(QueueNamePrefix=name).get("QueueUrls"), "the deleted queue came back"
        assert received == [{"event": 1}]
