"""Runs in the KV bucket: what is saved is what a new leader loads, however often it changed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from codeyard.bus import Bus, StaleRevision
from codeyard.coordinator.run_store import RunStore, StoredRun, confirm
from codeyard.schemas.model import Run, Task, TaskState
from tests.coordinator.plans import new_run, spec


def run_with_tasks(run_id: str, count: int) -> Run:
    tasks = {f"t{i}": Task(spec=spec(f"t{i}")) for i in range(count)}
    return msgspec.structs.replace(new_run(), run_id=run_id, tasks=tasks)


async def save(bus: Bus, store: RunStore, stored: StoredRun, task_ids: list[str]) -> None:
    await confirm(bus.pipeline, await store.save(stored, task_ids, bus.pipeline))


async def test_a_loaded_run_has_the_latest_value_of_every_task(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    stored = StoredRun(run_with_tasks("run1", 300))
    await save(bus, store, stored, list(stored.run.tasks))
    for round_ in range(5):  # many superseded values per key must not confuse the load
        for task_id in list(stored.run.tasks)[: 100 * (round_ % 3 + 1)]:
            task = stored.run.tasks[task_id]
            stored.run.tasks[task_id] = msgspec.structs.replace(task, attempt=task.attempt + 1)
        await save(bus, store, stored, list(stored.run.tasks))

    loaded = await asyncio.wait_for(store.load("run1", tasks=True), 20)  # a hang is a failure

    assert loaded is not None
    assert loaded.run == stored.run
    assert loaded.revisions == stored.revisions


async def test_a_header_loads_without_its_tasks_and_unknown_runs_are_none(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    await save(bus, store, StoredRun(run_with_tasks("run1", 3)), ["t0", "t1", "t2"])
    await save(bus, store, StoredRun(run_with_tasks("run2", 0)), [])

    header = await store.load("run1")
    empty = await store.load("run2", tasks=True)

    assert header is not None
    assert header.run.tasks == {}
    assert empty is not None
    assert empty.run.tasks == {}
    assert await store.load("run3", tasks=True) is None
    assert [run.run_id for run in await store.headers()] == ["run1", "run2"]


async def test_no_headers_in_an_empty_bucket(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    assert await asyncio.wait_for(store.headers(), 20) == []


async def test_a_write_against_an_old_revision_is_refused(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    leader = StoredRun(run_with_tasks("run1", 1))
    await save(bus, store, leader, ["t0"])
    deposed = await store.load("run1", tasks=True)
    assert deposed is not None
    leader.run.tasks["t0"] = msgspec.structs.replace(leader.run.tasks["t0"], state=TaskState.READY)
    await save(bus, store, leader, ["t0"])

    with pytest.raises(StaleRevision):
        await save(bus, store, deposed, ["t0"])
