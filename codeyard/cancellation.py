"""Waiting and stopping that a cancellation always ends.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives just after what it waits
for completed: it returns the result instead of raising `CancelledError` (fixed in 3.12). A loop
around it then runs on after its task was cancelled. That hung a coordinator stepping down
after a NATS restart: the loop fetching its results never stopped, so it never led again.
codeyard waits with `asyncio.timeout`, which has no such flaw (ruff bans `wait_for`); but
nats-py waits with `wait_for` inside its requests, so a task cancelled just as a reply comes
runs on: `stop_tasks` cancels again until it ends.

`in_background` starts a task that something holds until it ends: the event loop keeps only a
weak reference to a task, so one nobody holds can be collected before it finishes.

`finish_in_thread` is `asyncio.to_thread` for work a lock guards: a thread cannot be stopped,
so a cancellation takes effect only once the thread has returned, and the lock is not released
under work still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` is set within `timeout` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], patience: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one has ended; one still running after `patience`
    seconds lost its cancellation and is cancelled again. Their outcomes are dropped."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience)
        if pending:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.warning("ran on after being cancelled, cancelling again: %s", names)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: asyncio would otherwise log it as never retrieved


def in_background(
    holder: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """Run `work` as a task that `holder` keeps until it has ended."""
    task = asyncio.get_running_loop().create_task(work)
    holder.add(task)
    task.add_done_callback(holder.discard)
    return task


async def finish_in_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` in a thread; cancelled meanwhile (however often), it waits for
    `func` to return, then raises `CancelledError` and drops the result."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])  # unlike awaiting it, never cancels `future`
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: asyncio would otherwise log it as never retrieved
        raise asyncio.CancelledError
    return future.result()
