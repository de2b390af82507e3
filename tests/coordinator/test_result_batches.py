"""A `ResultBatch` is applied result by result, whatever runs they are of."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from codeyard.bus import Bus
from codeyard.bus.result_sender import ResultSender
from codeyard.bus.subjects import result_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import Patch, SubmitRun, TaskSpec, TaskState
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


async def test_the_results_of_a_batch_each_move_their_own_task(
    bus: Bus, coordinator: Coordinator
) -> None:
    for run_id in ("r1", "r2"):
        plan = [TaskSpec(id="only", title="the one task")]
        await ask(bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=plan))
    items = await work_for_coders(bus, 2)
    assert sorted(item.run_id for item in items) == ["r1", "r2"]

    sender = ResultSender(bus.pipeline, result_subject("coder"))
    await asyncio.gather(*(sender.send(patched(item, f"+ for {item.run_id}")) for item in items))

    for run_id in ("r1", "r2"):
        task = (await wait_for_task(bus, run_id, "only", TaskState.TESTING)).tasks["only"]
        assert task.patch is not None
        assert task.patch.text == f"+ for {run_id}"
    assert coordinator.stats.results == 2


async def test_a_result_sent_on_another_roles_subject_is_refused(
    bus: Bus, coordinator: Coordinator
) -> None:
    """Only the coders may publish on cy.result.coder: a patch on a review plugin's subject
    (its grants allow that one) is not taken as the coder's."""
    await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=[TaskSpec(id="t", title="t")]))
    [item] = await work_for_coders(bus, 1)

    await ResultSender(bus.pipeline, result_subject("review.security")).send(
        patched(item, "+ forged")
    )
    await ResultSender(bus.pipeline, result_subject("coder")).send(patched(item, "+ the coder's"))

    task = (await wait_for_task(bus, "r1", "t", TaskState.TESTING)).tasks["t"]
    assert task.patch is not None
    assert task.patch.text == "+ the coder's"  # the forged one, stored first, was refused
    # It stood for review.security failing the work it answers, which is none of its own:
    # applied, that failed nothing.
    assert coordinator.stats.results == 2
    assert task.error == ""


async def test_a_result_that_leaves_out_its_trace_is_applied(
    bus: Bus, coordinator: Coordinator
) -> None:
    """The result schemas do not require `trace_id` (the README asks for it): one without it is
    taken as an answer to the run as submitted, as before answers were checked against it."""
    await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=[TaskSpec(id="t", title="t")]))
    [item] = await work_for_coders(bus, 1)
    wire = b'{"type": "CodeResult", "run_id": "r1", "task_id": "t", "attempt": %d, ' % item.attempt
    wire += b'"patch": {"text": "+ no trace"}}'
    await bus.js.publish(result_subject("coder"), wire)

    task = (await wait_for_task(bus, "r1", "t", TaskState.TESTING)).tasks["t"]
    assert task.patch == Patch(text="+ no trace")
