"""Publishing through nats-py's outgoing buffer: what arrives is what `Client.publish` sends."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus
from codeyard.bus.direct_publish import DirectPublisher
from codeyard.bus.subjects import WORK_STREAM, consumer_name, work_subject


async def received(bus: Bus, subject: str, count: int) -> tuple[list[Msg], asyncio.Event]:
    messages: list[Msg] = []
    all_in = asyncio.Event()

    async def keep(msg: Msg) -> None:
        messages.append(msg)
        if len(messages) == count:
            all_in.set()

    await bus.nc.subscribe(subject, cb=keep)
    await bus.sync()
    return messages, all_in


def test_the_installed_nats_py_has_the_buffer_to_write_into(bus: Bus) -> None:
    # Without it every publish silently takes the slow way (see the module docstring).
    assert DirectPublisher(bus.nc).direct


async def test_messages_arrive_as_client_publish_sends_them_and_in_order(bus: Bus) -> None:
    publisher = DirectPublisher(bus.nc)
    messages, all_in = await received(bus, "direct.>", 4)

    await publisher.publish("direct.a", b"one", "reply.one", {"A-Name": "a value", "B": "2"})
    await bus.nc.publish("direct.b", b"two")  # the same buffer: order is kept
    await publisher.publish("direct.c", b"")
    await publisher.publish("direct.d", b"\r\nPUB x 1\r\n", headers={"Nats-Msg-Id": "id-4"})
    await asyncio.wait_for(all_in.wait(), 5)

    assert [(m.subject, m.data, m.reply) for m in messages] == [
        ("direct.a", b"one", "reply.one"),
        ("direct.b", b"two", ""),
        ("direct.c", b"", ""),
        ("direct.d", b"\r\nPUB x 1\r\n", ""),  # a payload is counted, never parsed
    ]
    assert messages[0].headers == {"A-Name": "a value", "B": "2"}
    assert messages[3].headers == {"Nats-Msg-Id": "id-4"}


@pytest.mark.parametrize(
    ("subject", "reply", "headers"),
    [
        ("direct.a b", "", None),
        ("direct.a\r\nPUB direct.b 0", "", None),
        ("", "", None),
        ("direct.a", "reply to", None),
        ("direct.a", "", {"Bad Name": "x"}),
        ("direct.a", "", {"Name": "x\r\nPUB direct.b 0\r\n"}),
    ],
)
async def test_what_would_break_the_command_is_refused_and_the_connection_serves_on(
    bus: Bus, subject: str, reply: str, headers: dict[str, str] | None
) -> None:
    publisher = DirectPublisher(bus.nc)
    messages, all_in = await received(bus, "direct.>", 1)

    with pytest.raises(ValueError, match="not a"):
        await publisher.publish(subject, b"x", reply, headers)
    await publisher.publish("direct.after", b"fine")
    await asyncio.wait_for(all_in.wait(), 5)

    assert [m.subject for m in messages] == ["direct.after"]
    assert bus.connected


async def test_without_the_buffer_it_publishes_through_client_publish(bus: Bus) -> None:
    publisher = DirectPublisher(bus.nc)
    publisher.direct = False  # as with a nats-py that lacks it
    messages, all_in = await received(bus, "direct.>", 1)

    await publisher.publish("direct.a", b"one", "reply.one", {"Nats-Msg-Id": "id-1"})
    await asyncio.wait_for(all_in.wait(), 5)

    assert [(m.subject, m.data, m.reply, m.headers) for m in messages] == [
        ("direct.a", b"one", "reply.one", {"Nats-Msg-Id": "id-1"})
    ]


async def test_an_ack_acknowledges_a_jetstream_message(bus: Bus) -> None:
    publisher = DirectPublisher(bus.nc)
    await bus.nc.publish(work_subject("coder"), b"{}")  # the stream takes any payload
    subscription = await bus.js.pull_subscribe_bind(
        durable=consumer_name("coder"), stream=WORK_STREAM
    )
    [msg] = await subscription.fetch(1, timeout=5)

    await publisher.ack(msg)
    await bus.sync()

    info = await bus.js.consumer_info(WORK_STREAM, consumer_name("coder"))
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert (await bus.js.stream_info(WORK_STREAM)).state.messages == 0  # a work queue: gone
