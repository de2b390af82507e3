"""Reading results the way the coordinator does: from its durable consumer on CY_RESULTS, a
`ResultBatch` unpacked into its results."""

from __future__ import annotations

import asyncio

import nats.errors

from codeyard.bus import Bus
from codeyard.bus.subjects import COORDINATOR_CONSUMER, RESULT_STREAM
from codeyard.schemas import Result, ResultBatch, ResultMessage, decode


async def collect_results(bus: Bus, count: int, timeout: float = 20.0) -> list[Result]:
    """Fetch and ack `count` results, or fail after `timeout` seconds."""
    subscription = await bus.js.pull_subscribe_bind(
        durable=COORDINATOR_CONSUMER, stream=RESULT_STREAM
    )
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(results) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"only {len(results)} of {count} results within {timeout}s")
            try:
                batch = await subscription.fetch(count - len(results), timeout=min(left, 1.0))
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in batch:
                message = decode(msg.data, ResultMessage)
                results += message.results if isinstance(message, ResultBatch) else [message]
                await msg.ack()
    finally:
        await subscription.unsubscribe()
    return results
