"""Every event of a run's steps is stored. Those the server lost while it stored the step that
made them (nats-server stopped between the two, say) are published again when the run is
loaded, the one saying it ended included (`codeyard run` waits for that one); and a step that
moves thousands of tasks tells them in events of a size the server takes."""

from __future__ import annotations

import asyncio

import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import journal_subject
from codeyard.coordinator.service import Coordinator
from codeyard.follow import is_run_end
from codeyard.schemas import (
    Accepted,
    CancelRun,
    RunEvent,
    RunStateChanged,
    SubmitRun,
    decode,
)
from codeyard.schemas.model import RunState, TaskState
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    ask,
    assert_dependency_order,
    run_events,
    running_coordinator,
    submit,
    tasks_moved_to,
    wait_until,
    workers_answering,
)
from tests.coordinator.plans import spec
from tests.coordinator.store_faults import DiesBefore, LosesEvents
from tests.coordinator.test_recovery import answer_at_once

PLAN = [spec("a"), spec("b", "a"), spec("c", "b")]
TASK_MOVES = b'"type":"TaskStatesChanged"'
RUN_ENDS = b'"schema_version":1,"state":"done"'  # (a RunStateChanged's: a change has no version)


@pytest.mark.parametrize("marker", [TASK_MOVES, RUN_ENDS], ids=["mid-run", "the-end"])
async def test_an_event_lost_while_its_step_was_stored_is_published_again(
    nats_server: EmbeddedNats, bus: Bus, marker: bytes
) -> None:
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = LosesEvents(coordinator_bus, marker, armed=False)
    coordinator_bus.pipeline = fault
    try:
        async with (
            running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)),
            workers_answering(bus, answer_at_once),
        ):
            await submit(bus, PLAN, "r1")
            fault.armed = True  # (the chain's first task is not even coded yet)
            run = await wait_until(bus, "r1", timeout=60)
            events = await run_events(bus, "r1")
    finally:
        await coordinator_bus.close()

    assert fault.lost is not None
    lost = decode(fault.lost, RunEvent)
    assert lost.msg_id in {event.msg_id for event in events}
    assert run.state is RunState.DONE
    assert_dependency_order(PLAN, events)
    ends = [e for e in events if isinstance(e, RunStateChanged) and e.state is RunState.DONE]
    assert ends


async def test_an_event_lost_before_the_run_waits_is_published_again_meanwhile(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """Results are acked once their step's entry is stored, before its events are (a run's
    next entry waits for them instead): the step before a long wait (a plan waiting for its
    approval) has no next entry for days. Its lost event is published again now."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = LosesEvents(coordinator_bus, b'"state":"plan_approval"')
    coordinator_bus.pipeline = fault
    submission = SubmitRun(run_id="p1", goal="g", plan=PLAN, approve_plan=True)
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)):
            await ask(bus, "submit", submission)
            for _ in range(100):
                told = {event.msg_id for event in await run_events(bus, "p1")}
                if fault.lost is not None and decode(fault.lost, RunEvent).msg_id in told:
                    break
                await asyncio.sleep(0.1)
    finally:
        await coordinator_bus.close()

    assert fault.lost is not None
    assert decode(fault.lost, RunEvent).msg_id in told


async def test_cancelling_a_run_of_thousands_of_tasks_tells_each_task_cancelled(bus: Bus) -> None:
    """In one event, the transitions were over the server's message limit: the step failed,
    and failed again at each try of the cancel. The run's end comes after them: followers
    (`codeyard run`, `logs -f`) stop reading there, and lost those told after it."""
    plan = [spec(f"t{index}") for index in range(5_000)]
    async with running_coordinator(Coordinator(bus, name="c1", capacity=4)):
        await ask(bus, "submit", SubmitRun(run_id="big", goal="g", plan=plan), timeout=60)
        reason = "enough " * 28  # (a reason is 200 characters at most)
        reply = await ask(bus, "cancel", CancelRun(run_id="big", reason=reason), timeout=60)
        assert isinstance(reply, Accepted), reply
        events = await run_events(bus, "big")

    assert tasks_moved_to(TaskState.CANCELLED, events) == {task.id for task in plan}
    assert is_run_end(events[-1]), events[-1]


@pytest.mark.parametrize("entry", [1, 2], ids=["first-entry", "second-entry"])
async def test_a_cancel_whose_step_was_never_stored_tells_the_run_cancelled_once(
    nats_server: EmbeddedNats, bus: Bus, entry: int
) -> None:
    """The events of a step too many for its journal entry were published before the entry,
    and those of a step of several entries (5,000 tasks cancelled) after its first: when the
    step was not stored, they told of a cancel that had not happened, and the cancel asked
    again (the coordinator says to, as its step failed) told it a second time."""
    plan = [spec(f"t{index}") for index in range(5_000)]
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = DiesBefore(coordinator_bus, journal_subject("big"), armed=False, nth=entry)
    coordinator_bus.pipeline = fault
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)):
            await ask(bus, "submit", SubmitRun(run_id="big", goal="g", plan=plan), timeout=60)
            fault.armed = True
            reason = "enough " * 28
            reply = await ask(bus, "cancel", CancelRun(run_id="big", reason=reason), timeout=60)
            events = await run_events(bus, "big")
    finally:
        await coordinator_bus.close()

    assert fault.died
    assert isinstance(reply, Accepted), reply
    cancelled = [
        e for e in events if isinstance(e, RunStateChanged) and e.state is RunState.CANCELLED
    ]
    assert len(cancelled) == 1, cancelled
    assert is_run_end(events[-1]), events[-1]
    assert tasks_moved_to(TaskState.CANCELLED, events) == {task.id for task in plan}
