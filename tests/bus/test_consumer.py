"""The continuous pull consumer: what it has asked for, and asking anew after a reconnect."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from codeyard.bus import Bus
from codeyard.bus.consumer import PullConsumer
from codeyard.bus.subjects import WORK_STREAM, work_subject
from tests.bus.test_worker import code_request


async def test_forgetting_every_request_lets_the_consumer_ask_anew(bus: Bus) -> None:
    received: list[Msg] = []
    ended: list[bool] = []
    consumer = PullConsumer(bus.nc, WORK_STREAM, "coder", received.append, expires=30)
    consumer.on_request_end = lambda: ended.append(True)
    await consumer.start()
    try:
        await consumer.request(5)
        assert consumer.outstanding == 5
        consumer.forget_all()  # what a reconnect does: the server may have lost the request
        assert consumer.outstanding == 0
        assert ended  # the owner is woken to ask again
        await consumer.request(1)
        await bus.publish(work_subject("coder"), code_request("t1"))
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        assert len(received) == 1
    finally:
        await consumer.stop()
