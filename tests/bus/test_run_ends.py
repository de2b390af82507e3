"""Work of an ended run is dropped by a worker that checks its run's header (`skip_ended_runs`),
however long ago and whether or not the worker heard the run's withdrawals; work of an open
run, or of a run whose header cannot be read, still runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from codeyard.bus import Bus, PullWorker
from codeyard.bus.run_ends import EndedRuns
from codeyard.bus.subjects import RUNS_BUCKET, work_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    Accepted,
    CancelRun,
    CodeResult,
    Patch,
    Result,
    Run,
    RunState,
    SubmitRun,
    TaskSpec,
    TaskState,
    WorkItem,
    encode,
)
from tests.bus.test_worker import code_request, serving, settled, terminations
from tests.coordinator.harness import ask, running_coordinator, status, wait_for_task


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-ends", capacity=8)) as coordinator:
        yield coordinator


class Recorder:
    """A coder that answers at once, except for tasks named "held*", which it holds until
    `release` is set; it records every item it was given."""

    def __init__(self) -> None:
        self.given: list[tuple[str, str]] = []  # (run, task)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, item: WorkItem) -> Result:
        self.given.append((item.run_id, item.task_id))
        if item.task_id.startswith("held"):
            self.holding.set()
            await self.release.wait()
        return CodeResult(patch=Patch(text=""), summary="done")


async def submit(bus: Bus, run_id: str, *task_ids: str, dispatched: bool = True) -> None:
    """Submit a run of independent tasks; with `dispatched`, return once each task's work
    item is out to the coders (unanswered)."""
    plan = [TaskSpec(id=task_id, title=task_id) for task_id in task_ids]
    reply = await ask(bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=plan))
    assert isinstance(reply, Accepted), reply
    for task_id in task_ids if dispatched else ():
        await wait_for_task(bus, run_id, task_id, TaskState.CODING)


async def cancel(bus: Bus, run_id: str) -> None:
    reply = await ask(bus, "cancel", CancelRun(run_id=run_id, reason="not wanted"))
    assert isinstance(reply, Accepted), reply
    assert (await status(bus, run_id)).state is RunState.CANCELLED


async def termed(queue: asyncio.Queue[int], count: int, coder: Recorder) -> None:
    """Return once the worker termed `count` work items."""
    try:
        async with asyncio.timeout(10):
            for _ in range(count):
                await queue.get()
    except TimeoutError:
        raise AssertionError(f"not termed; the handler was given {coder.given}") from None


async def test_a_worker_started_after_its_run_was_cancelled_never_runs_its_queued_work(
    bus: Bus, coordinator: Coordinator
) -> None:
    """Scaled up or restarted after the withdrawals went out: it never heard them."""
    await submit(bus, "late", "a", "b", "c")
    await cancel(bus, "late")  # the notices go out now, to no coder
    coder = Recorder()
    worker = PullWorker(bus, "coder", coder, skip_ended_runs=True)
    async with terminations(bus, "coder") as queue, serving(worker):
        await termed(queue, 3, coder)
        info = await settled(bus, "coder")
    assert coder.given == []
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    assert worker.stats.run_ended == 3
    assert worker.ended_runs is not None
    assert worker.ended_runs.reads == 1  # one read for the run; its later items cost none
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 0  # nothing answered


async def test_work_whose_withdrawal_was_forgotten_is_dropped_when_its_run_ended(
    bus: Bus, coordinator: Coordinator
) -> None:
    """A long backlog: the item comes after the worker forgot the run's withdrawal."""
    coder = Recorder()
    worker = PullWorker(bus, "coder", coder, skip_ended_runs=True, withdrawal_keep=0.2)
    async with terminations(bus, "coder") as queue, serving(worker):
        await submit(bus, "busy", "held")
        await asyncio.wait_for(coder.holding.wait(), 10)  # its one slot is taken
        await submit(bus, "stale", "x")  # waits in the queue
        await cancel(bus, "stale")  # the worker hears the withdrawal...
        await asyncio.sleep(1.0)  # ...and forgets it
        coder.release.set()
        await termed(queue, 1, coder)
        await wait_for_task(bus, "busy", "held", TaskState.TESTING)
    assert coder.given == [("busy", "held")]
    assert worker.stats.run_ended == 1


async def test_work_of_an_open_run_still_runs(bus: Bus, coordinator: Coordinator) -> None:
    coder = Recorder()
    worker = PullWorker(bus, "coder", coder, skip_ended_runs=True)
    async with serving(worker):
        await submit(bus, "open", "a", dispatched=False)
        await wait_for_task(bus, "open", "a", TaskState.TESTING)  # answered, and taken
    assert coder.given == [("open", "a")]
    assert worker.stats.run_ended == 0


async def test_work_runs_when_the_runs_bucket_cannot_be_read(bus: Bus) -> None:
    """No telling whether the run ended: run it, as without the check, and stop asking for a
    while rather than make each item wait for a read that fails."""
    await bus.js.delete_key_value(RUNS_BUCKET)
    for task_id in ("t1", "t2"):
        await bus.publish(work_subject("coder"), code_request(task_id, run_id="gone"))
    coder = Recorder()
    worker = PullWorker(bus, "coder", coder, skip_ended_runs=True)
    async with serving(worker):
        for _ in range(100):
            if len(coder.given) == 2:
                break
            await asyncio.sleep(0.05)
        info = await settled(bus, "coder")
    assert sorted(coder.given) == [("gone", "t1"), ("gone", "t2")]
    assert info.num_ack_pending == 0  # answered and acked
    assert worker.ended_runs is not None
    assert worker.ended_runs.reads == 1  # the second item did not ask again


async def test_without_the_check_a_worker_reads_no_header(bus: Bus) -> None:
    """The default, for handlers that spend nothing (the throughput benchmark's no-op
    workers): not even an ended run's work costs a read."""
    kv = await bus.js.key_value(RUNS_BUCKET)
    await kv.put("ended", encode(Run(run_id="ended", goal="g", state=RunState.CANCELLED)))
    await bus.publish(work_subject("coder"), code_request("t1", run_id="ended"))
    coder = Recorder()
    worker = PullWorker(bus, "coder", coder)
    async with serving(worker):
        for _ in range(100):
            if coder.given:
                break
            await asyncio.sleep(0.05)
    assert worker.ended_runs is None
    assert coder.given == [("ended", "t1")]


async def test_ended_runs_are_remembered_only_so_many(bus: Bus) -> None:
    kv = await bus.js.key_value(RUNS_BUCKET)
    states = {
        "r-done": RunState.DONE,
        "r-failed": RunState.FAILED,
        "r-cancelled": RunState.CANCELLED,
        "r-open": RunState.EXECUTING,
        "r-deleted": RunState.CANCELLED,
    }
    for run_id, state in states.items():
        await kv.put(run_id, encode(Run(run_id=run_id, goal="g", state=state)))
    await kv.delete("r-deleted")  # a delete marker: no state to go by
    ended = EndedRuns(bus, limit=2)

    answers = {run_id: await ended.ended(run_id) for run_id in [*states, "r-never-stored"]}

    assert answers == {
        "r-done": True,
        "r-failed": True,
        "r-cancelled": True,
        "r-open": False,
        "r-deleted": False,
        "r-never-stored": False,
    }
    assert len(ended) == 2  # the oldest ended run went first
    assert not ended.known("r-done")
    assert ended.known("r-failed")
    assert ended.known("r-cancelled")
    reads = ended.reads
    assert await ended.ended("r-failed")
    assert ended.reads == reads  # remembered: no read


async def test_a_run_id_submitted_again_after_its_record_was_deleted_is_not_taken_for_ended(
    bus: Bus,
) -> None:
    """Ended runs are remembered by run and submission (their work's `trace_id`): an operator
    who deletes an ended run's record may submit the same run id again, whose work must run."""
    kv = await bus.js.key_value(RUNS_BUCKET)
    ended = EndedRuns(bus)
    await kv.put("r-again", encode(Run(run_id="r-again", goal="g", state=RunState.CANCELLED)))
    assert await ended.ended("r-again", "first-submission")

    await kv.delete("r-again")
    await kv.put("r-again", encode(Run(run_id="r-again", goal="g", state=RunState.EXECUTING)))

    assert not await ended.ended("r-again", "second-submission")
    assert ended.known("r-again", "first-submission")


async def test_work_without_a_run_id_costs_no_read(bus: Bus) -> None:
    """The schema lets a work item leave its run out: there is no header to read, and no
    request is sent for one."""
    kv = await bus.js.key_value(RUNS_BUCKET)
    await kv.put("ended", encode(Run(run_id="ended", goal="g", state=RunState.CANCELLED)))
    ended = EndedRuns(bus)

    assert not await ended.ended("")
    assert await ended.ended("ended")
    assert ended.reads == 1
