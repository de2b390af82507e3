"""What a coordinator step sends, in which order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus
from codeyard.bus.result_sender import ResultSender
from codeyard.bus.subjects import journal_subject, result_subject, work_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import SubmitRun, TaskSpec, TaskState
from tests.coordinator.harness import (
    ask,
    patched,
    running_coordinator,
    wait_for_task,
    work_for_coders,
)


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-test")) as coordinator:
        yield coordinator


async def test_a_steps_work_goes_out_before_its_journal_entry(
    bus: Bus, coordinator: Coordinator
) -> None:
    """Workers start on a step's work while the coordinator still encodes the rest of the step:
    the work items reach the server first."""
    seen: list[str] = []

    async def note(msg: Msg) -> None:
        seen.append(msg.subject)

    # one connection sees one publisher's messages in the order the server got them
    for subject in (work_subject("coder"), work_subject("tester"), journal_subject("r1")):
        await bus.nc.subscribe(subject, cb=note)
    await bus.sync()
    plan = [TaskSpec(id="only", title="the one task")]
    await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
    [item] = await work_for_coders(bus, 1)
    await ResultSender(bus.pipeline, result_subject("coder")).send(patched(item, "+"))
    await wait_for_task(bus, "r1", "only", TaskState.TESTING)
    await bus.sync()

    assert seen == [
        work_subject("coder"),
        journal_subject("r1"),
        work_subject("tester"),
        journal_subject("r1"),
    ]
