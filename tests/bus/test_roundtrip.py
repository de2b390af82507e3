"""Every message type survives a trip through a real nats-server, stream and request/reply alike."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from codeyard.bus import Bus
from codeyard.bus.subjects import EVENT_STREAM
from codeyard.schemas import Envelope, decode, encode
from tests.schemas.samples import sample_messages


async def test_every_message_round_trips_through_jetstream(bus: Bus) -> None:
    samples = sample_messages()
    # cy.events.<run_id> is a limits stream any subscriber may read; the payload is what matters.
    for index, message in enumerate(samples):
        await bus.publish(f"cy.events.roundtrip{index}", message)
    subscription = await bus.js.pull_subscribe("cy.events.>", stream=EVENT_STREAM)
    received = [m.data for m in await subscription.fetch(len(samples), timeout=5)]
    assert [
        decode(data, type(sample)) for data, sample in zip(received, samples, strict=True)
    ] == samples
    assert received == [encode(sample) for sample in samples]


async def test_every_message_round_trips_through_request_reply(bus: Bus) -> None:
    samples = sample_messages()
    seen: list[bytes] = []

    async def respond(msg: Msg) -> None:
        seen.append(msg.data)
        await msg.respond(msg.data)

    await bus.nc.subscribe("cy.test.echo", cb=respond)
    for message in samples:
        reply = await bus.request("cy.test.echo", message, type(message))
        assert reply == message
    await asyncio.sleep(0)
    assert seen == [encode(message) for message in samples]
    assert all(isinstance(message, Envelope) for message in samples)
