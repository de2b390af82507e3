"""What a new leader makes of the store a coordinator left when it died in the middle of a step."""

from __future__ import annotations

import msgspec
import pytest

from codeyard.bus import Bus
from codeyard.bus.subjects import APPROVALS_BUCKET
from codeyard.coordinator.run_store import RunStore, StoredRun
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import ApprovalList, ListApprovals, PendingApproval
from codeyard.schemas.model import RunState, Task, TaskState
from tests.coordinator.harness import ask, running_coordinator
from tests.coordinator.plans import new_run, spec
from tests.coordinator.store_faults import DiesBeforeTheHeader


async def test_a_run_that_ended_in_a_step_cut_short_is_closed_by_the_next_leader(
    bus: Bus,
) -> None:
    """The step's journal entry says the run is done; the header saying so was never written.
    The run had asked a person something: an ended run's question is no longer listed."""
    store = await RunStore.open(bus.js)
    approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
    question = PendingApproval(approval_id="q1", run_id="run1", action="plan", detail="a plan")
    await approvals.put("q1", question)
    run = msgspec.structs.replace(
        new_run(), state=RunState.EXECUTING, tasks={"t0": Task(spec=spec("t0"))}
    )
    stored = StoredRun(run)
    await store.confirm(bus.pipeline, [await store.save(stored, ["t0"], bus.pipeline)])
    run.tasks["t0"].state = TaskState.MERGED
    run.state = RunState.DONE
    with pytest.raises(ConnectionError):
        await store.confirm(
            DiesBeforeTheHeader(bus, "run1"), [await store.save(stored, ["t0"], bus.pipeline)]
        )
    [header] = await store.headers()
    assert header.state is RunState.EXECUTING  # what a new leader finds open

    async with running_coordinator(Coordinator(bus, name="successor", capacity=4)):
        [header] = await store.headers()  # written before it started to lead
        listed = await ask(bus, "approvals", ListApprovals())
    assert header.state is RunState.DONE
    assert isinstance(listed, ApprovalList)
    assert listed.approvals == []
    loaded = await store.load("run1", tasks=True)
    assert loaded is not None
    assert loaded.run.tasks["t0"].state is TaskState.MERGED
