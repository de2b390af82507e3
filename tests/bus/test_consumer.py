"""The continuous pull consumer: what it has asked for, what the server still owes it however
the server splits messages across requests, and asking anew after a reconnect, an outage or a
refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.consumer import REFUSED_PAUSE, PullConsumer, delivery_count
from codeyard.bus.subjects import WORK_STREAM, consumer_name, work_subject
from codeyard.bus.topology import ensure_role_consumer
from tests.bus.test_worker import code_request, consumer_info_when, until
from tests.conftest import TEST_TOPOLOGY


def counting(target: int) -> tuple[Callable[[], None], asyncio.Event]:
    """A callback for `on_ask_again`, and an event set once it was called `target` times."""
    reached = asyncio.Event()
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        if calls >= target:
            reached.set()

    return call, reached


async def test_forgetting_every_request_lets_the_consumer_ask_anew(bus: Bus) -> None:
    received: list[Msg] = []
    ask_again, asked_again = counting(1)
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", received.append, expires=30)
    consumer.on_ask_again = ask_again
    await consumer.start()
    try:
        assert await consumer.request(5)
        assert consumer.outstanding == 5
        consumer.forget_all()  # what a reconnect does: the server may have lost the request
        assert consumer.outstanding == 0
        assert asked_again.is_set()  # the owner is woken to ask again
        await consumer.request(1)
        await bus.publish(work_subject("coder"), code_request("t1"))
        await until(lambda: len(received) == 1)
    finally:
        await consumer.stop()


async def test_the_count_owed_ends_at_zero_however_the_server_splits_messages(bus: Bus) -> None:
    """nats-server hands messages to its waiting requests in turn, not oldest first, and a
    message cannot say which request it fills: whatever the split, once every request ended
    (each with a 408 saying what it was still owed) the consumer is owed nothing."""
    received: list[Msg] = []
    ask_again, all_ended = counting(3)
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", received.append, expires=1)
    consumer.on_ask_again = ask_again
    await consumer.start()
    try:
        for _ in range(3):
            assert await consumer.request(4)
        await consumer_info_when(bus, lambda info: info.num_waiting == 3)
        assert consumer.outstanding == 12

        await bus.publish_many([(work_subject("coder"), code_request(f"t{i}")) for i in range(6)])
        await until(lambda: len(received) == 6)
        assert consumer.outstanding == 6  # the server still owes 6, however they are spread

        await asyncio.wait_for(all_ended.wait(), 10)  # each request ended when it expired
        assert consumer.outstanding == 0
    finally:
        await consumer.stop()


async def test_a_stored_message_looking_like_a_status_is_delivered(bus: Bus) -> None:
    """Only what comes on the consumer's inbox is a status: a stored message keeps its stream
    subject, and an empty one with a Status header is delivered as any other (and counted)."""
    received: list[Msg] = []
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", received.append, expires=30)
    await consumer.start()
    try:
        headers = {"Status": "409", "Description": "Consumer Deleted"}
        await bus.js.publish(work_subject("coder"), b"", headers=headers)
        assert await consumer.request(2)
        await until(lambda: len(received) == 1)
        [msg] = received
        assert (msg.subject, msg.data) == (work_subject("coder"), b"")
        assert consumer.outstanding == 1  # the request still waits, owed one more
        assert await consumer.request(1)  # no pause: nothing refused it
    finally:
        await consumer.stop()


async def test_a_deleted_consumer_ends_every_request_owing_nothing(bus: Bus) -> None:
    """Requests the server ends without saying what it still owed them ("409 Consumer Deleted")
    are owed nothing more, and asking again waits for a pause: it would only be refused."""
    ask_again, asked_again = counting(1)
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", lambda msg: None, expires=30)
    consumer.on_ask_again = ask_again
    await consumer.start()
    try:
        for _ in range(2):
            assert await consumer.request(3)
        await consumer_info_when(bus, lambda info: info.num_waiting == 2)
        await bus.js.delete_consumer(WORK_STREAM, "coder")
        await until(lambda: consumer.outstanding == 0)
        assert not await consumer.request(3)
        await asyncio.wait_for(asked_again.wait(), 10)
    finally:
        await consumer.stop()


async def test_a_consumer_created_late_is_asked_soon_after_not_in_a_loop(bus: Bus) -> None:
    """A request for a consumer that does not exist yet meets "503 no responders": it ends at
    once (not at its expiry), and the owner is asked to ask again only after a pause, so a
    worker started before its consumer serves soon after the consumer is created."""
    role = "review.late"
    received: list[Msg] = []
    ask_again, asked_again = counting(1)
    consumer = PullConsumer(bus.nc, WORK_STREAM, consumer_name(role), received.append, expires=30)
    consumer.on_ask_again = ask_again
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        assert await consumer.request(1)
        await until(lambda: consumer.outstanding == 0)  # refused: owed nothing
        assert not await consumer.request(1)  # within the pause: not even sent
        await ensure_role_consumer(bus.js, role, TEST_TOPOLOGY)

        await asyncio.wait_for(asked_again.wait(), 10)  # the pause is over
        assert loop.time() - asked >= REFUSED_PAUSE
        assert await consumer.request(1)
        await bus.publish(work_subject(role), code_request("t1"))
        await until(lambda: len(received) == 1)
    finally:
        await consumer.stop()


async def test_a_request_nats_refuses_to_send_is_not_counted(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py refuses publishes once it buffered 2 MiB during an outage: the request is not
    counted as owed, and the owner carries on (it asks again later)."""
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", lambda msg: None, expires=30)
    await consumer.start()
    try:
        with monkeypatch.context() as patch:

            async def full(*args: object, **kwargs: object) -> None:
                raise nats.errors.OutboundBufferLimitError

            patch.setattr(bus.nc, "publish", full)
            assert not await consumer.request(4)
        assert consumer.outstanding == 0
        assert await consumer.request(4)
        assert consumer.outstanding == 4
    finally:
        await consumer.stop()


async def test_nothing_is_requested_while_the_server_is_away(tmp_path: Path) -> None:
    """nats-py would buffer a request made while disconnected and send it on reconnect, after
    the reconnect made the consumer forget every request: the server would fill it on top of
    those asked anew."""
    server = EmbeddedNats(tmp_path)
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", lambda msg: None, expires=30)
        try:
            await bus.setup()
            await consumer.start()
            bus.reconnected.append(consumer.forget_all)
            await asyncio.to_thread(server.stop)
            await until(lambda: not bus.connected)
            assert not await consumer.request(4)
            assert consumer.outstanding == 0

            await asyncio.to_thread(server.start)  # same port, same store
            await until(lambda: bus.connected)
            assert await consumer.request(4)
            info = await consumer_info_when(bus, lambda info: bool(info.num_waiting))
            assert info.num_waiting == 1  # only the request made once connected
        finally:
            await consumer.stop()
            await bus.close()


async def test_a_delivery_counts_as_nats_py_counts_it(bus: Bus) -> None:
    """The count read from a real delivery's ack subject is nats-py's, on first delivery and
    after a nak; an ack subject of the longer form (a JetStream domain) is read by nats-py."""
    received: list[Msg] = []
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", received.append, expires=30)
    await consumer.start()
    try:
        await bus.js.publish(work_subject("coder"), b"work")
        for deliveries in (1, 2):
            assert await consumer.request(1)
            await until(lambda: bool(received))
            msg = received.pop()
            assert delivery_count(msg) == msg.metadata.num_delivered == deliveries
            await msg.nak()
    finally:
        await consumer.stop()
    longer = "$JS.ACK.hub.ACCHASH.CY_WORK.cy-coder.7.100.90.1764456789123456789.0.token"
    assert delivery_count(Msg(bus.nc, subject="x", reply=longer)) == 7
