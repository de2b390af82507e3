"""Waiting for an event with a timeout, in a way that a cancellation always ends.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives just after what it waits
for completed: it returns the result instead of raising `CancelledError` (fixed in 3.12). A loop
around it then runs on after its task was cancelled. That hung a coordinator stepping down after
a NATS restart: the loop fetching its results never stopped, so it never led again. The
`asyncio.timeout` context has no such flaw; codeyard waits with it (ruff bans `wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` is set within `timeout` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
