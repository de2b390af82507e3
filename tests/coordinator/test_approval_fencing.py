"""The coordinator's writes to `cy_approvals` are fenced like its runs' writes: a question is
created only if new, an answer replaces only the question as it was read. A leader that lost its
lease and whose writes land late can neither put back a question its successor saw answered,
nor answer it again."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import APPROVALS_BUCKET
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    ControlError,
    ListApprovals,
    PendingApproval,
    SubmitRun,
    TaskSpec,
)
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, running_coordinator
from tests.coordinator.store_faults import dies_before_the_header, submit_until_it_dies

PLAN = [TaskSpec(id="x", title="x")]


async def the_question(bus: Bus) -> PendingApproval:
    listed = await ask(bus, "approvals", ListApprovals())
    assert isinstance(listed, ApprovalList)
    [question] = listed.approvals
    return question


async def test_a_deposed_leaders_late_writes_leave_an_answered_question_as_it_is(
    bus: Bus,
) -> None:
    approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
    async with running_coordinator(Coordinator(bus, name="successor")):
        await ask(bus, "submit", SubmitRun(run_id="p1", goal="g", plan=PLAN, approve_plan=True))
        question = await the_question(bus)
        asked = await approvals.get(question.approval_id)
        assert asked is not None
        reply = await ask(bus, "approve", Approve(approval_id=question.approval_id, by="ana"))
        assert isinstance(reply, Accepted)

    deposed = Coordinator(bus, name="deposed")  # its writes, landing late
    denied = msgspec.structs.replace(question, status="denied", answered_by="bob")
    # the question asked again, and an answer to the question as it was read
    await deposed._store_approvals([(question, 0), (denied, asked.revision)])

    stored = await approvals.get(question.approval_id)
    assert stored is not None
    assert (stored.value.status, stored.value.answered_by) == ("approved", "ana")


async def test_a_run_submitted_again_after_a_cut_submission_asks_its_question_anew(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The first submission stored its question, then stopped before its run was stored. The
    same run id submitted again asks a question of its own: taking over the first one would
    have it expire early, counted from when it was first asked."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = dies_before_the_header(coordinator_bus, "p1")
    coordinator_bus.pipeline = fault
    approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
    submission = SubmitRun(run_id="p1", goal="g", plan=PLAN, approve_plan=True)
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1")):
            await submit_until_it_dies(bus, submission, fault)
            [first_id] = await approvals.keys()
            again_at = datetime.now(UTC)
            assert isinstance(await ask(bus, "submit", submission), Accepted)
            question = await the_question(bus)  # the first submission's is not listed
            orphan = await ask(bus, "approve", Approve(approval_id=first_id, by="ana"))
            still = await the_question(bus)
    finally:
        await coordinator_bus.close()

    assert question.approval_id != first_id
    assert isinstance(orphan, ControlError)
    assert "an earlier submission of run p1 asked this" in orphan.error
    assert still == question  # answering the first submission's question changed nothing
    assert question.requested_at >= again_at
    assert sorted(await approvals.keys()) == sorted([first_id, question.approval_id])
