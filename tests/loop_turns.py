"""Counting the turns of the running event loop: code that should leave it turning (work in a
thread) is checked by the turns it took meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turns:
    def __init__(self) -> None:
        self.count = 0


@asynccontextmanager
async def counting_turns() -> AsyncIterator[Turns]:
    turns = Turns()

    async def tick() -> None:
        while True:
            turns.count += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        yield turns
    finally:
        ticker.cancel()
