"""Reading results the way the coordinator does: from its durable consumer on CY_RESULTS, a
`ResultBatch` unpacked into its results, and the work a worker could not decode."""

from __future__ import annotations

import asyncio

import nats.errors

from codeyard.bus import Bus
from codeyard.bus.subjects import COORDINATOR_CONSUMER, RESULT_STREAM
from codeyard.schemas import Result, ResultBatch, ResultMessage, UndecodableWork, decode


async def collect_answers(
    bus: Bus, count: int, timeout: float = 20.0
) -> list[Result | UndecodableWork]:
    """Fetch and ack `count` results and undecodable work, or fail after `timeout` seconds."""
    subscription = await bus.js.pull_subscribe_bind(
        durable=COORDINATOR_CONSUMER, stream=RESULT_STREAM
    )
    answers: list[Result | UndecodableWork] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(answers) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"only {len(answers)} of {count} answers within {timeout}s")
            try:
                batch = await subscription.fetch(count - len(answers), timeout=min(left, 1.0))
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in batch:
                message = decode(msg.data, ResultMessage)
                answers += message.results if isinstance(message, ResultBatch) else [message]
                await msg.ack()
    finally:
        await subscription.unsubscribe()
    return answers


async def collect_results(bus: Bus, count: int, timeout: float = 20.0) -> list[Result]:
    """Fetch and ack `count` results (nothing undecodable among them), or fail after `timeout`."""
    answers = await collect_answers(bus, count, timeout)
    results = [answer for answer in answers if not isinstance(answer, UndecodableWork)]
    assert len(results) == len(answers), answers
    return results
