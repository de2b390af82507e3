"""Status reads from the store are done after the step that took them, so that however many
runs are stored, or however big an ended run is, reading them holds up no run's work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codeyard.bus import Bus
from codeyard.coordinator.run_store import RunStore, StoredRun
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import ControlError, RunState, RunStatus, StatusQuery, TaskSpec
from codeyard.schemas.messages import AFTER_EVERY_ID
from tests.coordinator.harness import (
    ask,
    running_coordinator,
    scripted_coder,
    submit,
    wait_until,
    workers_answering,
)


async def test_a_slow_list_of_every_run_holds_up_no_run(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading = asyncio.Event()
    may_finish = asyncio.Event()
    headers = RunStore.headers

    async def slow_headers(store: RunStore) -> Any:
        reading.set()
        await may_finish.wait()
        return await headers(store)

    async with (
        running_coordinator(Coordinator(bus, name="coord-reads")),
        workers_answering(bus, scripted_coder()),
    ):
        monkeypatch.setattr(RunStore, "headers", slow_headers)  # (once it leads: it reads them)
        listing = asyncio.create_task(ask(bus, "status", StatusQuery()))
        await reading.wait()
        await submit(bus, [TaskSpec(id="a", title="a"), TaskSpec(id="b", title="b", deps=["a"])])
        run = await wait_until(bus, "run1", timeout=30)
        assert run.state is RunState.DONE  # while every run's header was being read
        assert not listing.done()
        may_finish.set()
        listed = await listing
    assert isinstance(listed, RunStatus), listed
    assert [run.run_id for run in listed.runs] == ["run1"]


async def test_an_ended_runs_header_is_read_without_its_tasks(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[bool] = []
    load = RunStore.load

    async def counted_load(
        store: RunStore, run_id: str, *, tasks: bool = False
    ) -> StoredRun | None:
        loads.append(tasks)
        return await load(store, run_id, tasks=tasks)

    monkeypatch.setattr(RunStore, "load", counted_load)
    plan = [TaskSpec(id=f"t{i}", title="t") for i in range(20)]
    async with (
        running_coordinator(Coordinator(bus, name="coord-headers")),
        workers_answering(bus, scripted_coder()),
    ):
        await submit(bus, plan)
        assert (await wait_until(bus, "run1", timeout=60)).state is RunState.DONE
        loads.clear()
        header = await ask(
            bus, "status", StatusQuery(run_id="run1", paged=True, after=AFTER_EVERY_ID)
        )
        whole = await ask(bus, "status", StatusQuery(run_id="run1", paged=True))
        unknown = await ask(bus, "status", StatusQuery(run_id="nope"))
    assert isinstance(header, RunStatus)
    assert (header.runs[0].state, header.runs[0].tasks) == (RunState.DONE, {})
    assert isinstance(whole, RunStatus)
    assert len(whole.runs[0].tasks) == 20
    assert isinstance(unknown, ControlError)
    assert loads == [False, True, True]
