"""A leader deposed in the middle of a step (paused past its lease: a VM frozen, a stopped
process) finds its journal entry refused when it wakes: the step never happened, and nothing
of it may be told. Its events told followers of transitions the run never made (a task shown
testing again after it was merged, a done run shown 195/200 merged)."""

from __future__ import annotations

from collections import Counter

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import journal_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import TaskStatesChanged
from codeyard.schemas.model import RunState
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    run_events,
    running_coordinator,
    submit,
    wait_until,
    workers_answering,
)
from tests.coordinator.plans import spec
from tests.coordinator.store_faults import RefusesAnEntry
from tests.coordinator.test_recovery import answer_at_once


async def test_a_step_whose_entry_is_refused_tells_nothing(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = RefusesAnEntry(coordinator_bus, journal_subject("r1"), armed=False)
    coordinator_bus.pipeline = fault
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)):
            await submit(bus, [spec("a"), spec("b", "a"), spec("c", "b")], "r1")
            fault.armed = True  # r1's next step is refused, then done again from the store
            async with workers_answering(bus, answer_at_once):
                run = await wait_until(bus, "r1", timeout=60)
            events = await run_events(bus, "r1")
    finally:
        await coordinator_bus.close()

    assert fault.refused
    assert fault.told == []  # nothing of the step whose entry was refused
    assert run.state is RunState.DONE
    told = Counter(
        (change.task_id, change.attempt, change.previous, change.state)
        for event in {event.msg_id: event for event in events}.values()
        if isinstance(event, TaskStatesChanged)
        for change in event.changes
    )
    assert [transition for transition, times in told.items() if times > 1] == []
