"""Waiting and stopping that a cancellation always ends, unlike with Python 3.11's `wait_for`."""

from __future__ import annotations

import asyncio
import threading

import pytest

from codeyard.cancellation import finish_in_thread, in_background, stop_tasks, wait_event


async def test_tells_whether_the_event_came_in_time() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5)


async def test_a_loop_around_it_stops_when_cancelled_just_after_the_event() -> None:
    """The case `asyncio.wait_for` gets wrong on Python 3.11: the event is set and the waiting
    task cancelled in the same tick. `wait_for` returns normally and the loop runs on."""
    event = asyncio.Event()
    rounds = 0

    async def serve() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await wait_event(event, 1.0)
            event.clear()

    task = asyncio.create_task(serve())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done
    assert task.cancelled()
    assert rounds == 1


async def test_stop_tasks_cancels_again_a_task_that_lost_its_cancellation() -> None:
    """As one awaiting a nats-py request (which waits with `wait_for`) may: it runs on."""
    cancellations = 0

    async def swallows_the_first() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise

    async def fails() -> None:
        raise RuntimeError("already over")

    stubborn = asyncio.create_task(swallows_the_first())
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await stop_tasks([stubborn, failed], patience=0.1)
    assert stubborn.cancelled()
    assert cancellations == 2
    assert isinstance(failed.exception(), RuntimeError)


async def test_a_background_task_is_held_until_it_ends() -> None:
    holder: set[asyncio.Task[None]] = set()
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()

    task = in_background(holder, work())
    await asyncio.sleep(0)
    assert holder == {task}
    release.set()
    await task
    await asyncio.sleep(0)  # done callbacks run on the next turn
    assert holder == set()


async def test_work_in_a_thread_ends_before_its_cancellation_takes_effect() -> None:
    """As git work under a lock must: the lock is released only once the thread returned."""
    started = threading.Event()
    release = threading.Event()
    steps: list[str] = []

    def work() -> str:
        started.set()
        release.wait(30)
        steps.append("thread returned")
        return "result"

    async def locked() -> str:
        try:
            return await finish_in_thread(work)
        finally:
            steps.append("lock released")

    task = asyncio.create_task(locked())
    await asyncio.to_thread(started.wait, 30)
    try:
        task.cancel()
        for _ in range(3):  # turns enough for a cancelled `asyncio.to_thread` to have ended
            await asyncio.sleep(0)
        assert not task.done()  # the thread still works: the task waits for it
        task.cancel()  # cancelled again, as `stop_tasks` does
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["thread returned", "lock released"]
