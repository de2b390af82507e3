"""Answers to one question that reach the coordinator in the same step: the first is taken, and
the others are refused without being recorded, so the stored answer is the one that applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import APPROVALS_BUCKET
from codeyard.coordinator.service import ControlCall, Coordinator
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    ControlError,
    Deny,
    Envelope,
    ListApprovals,
    PendingApproval,
    RunState,
    SubmitRun,
    TaskSpec,
)
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, running_coordinator, status
from tests.coordinator.store_faults import DiesBefore


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-answers")) as coordinator:
        yield coordinator


async def in_one_step(coordinator: Coordinator, *requests: Approve | Deny) -> list[Envelope]:
    """The coordinator's replies to `requests`, all handled in the same step: queued at once,
    before its inbox loop can run, which then takes every queued input as one batch."""
    loop = asyncio.get_running_loop()
    calls = [ControlCall(request, loop.create_future()) for request in requests]
    for call in calls:
        coordinator._inbox.put_nowait(call)
    replies = [await asyncio.wait_for(call.reply, 10) for call in calls]
    answers = [reply for reply in replies if isinstance(reply, Envelope)]
    assert len(answers) == len(replies), replies  # (only reads are answered after the step)
    return answers


@pytest.mark.parametrize("approve_first", [True, False], ids=["approve-deny", "deny-approve"])
async def test_of_two_answers_in_one_step_the_first_applies_and_is_the_one_stored(
    bus: Bus, coordinator: Coordinator, approve_first: bool
) -> None:
    plan = [TaskSpec(id="x", title="x")]
    await ask(bus, "submit", SubmitRun(run_id="p1", goal="g", plan=plan, approve_plan=True))
    listed = await ask(bus, "approvals", ListApprovals())
    assert isinstance(listed, ApprovalList)
    [question] = listed.approvals
    approve = Approve(approval_id=question.approval_id, by="alice")
    deny = Deny(approval_id=question.approval_id, by="bob", reason="no")

    first, second = await in_one_step(
        coordinator, *((approve, deny) if approve_first else (deny, approve))
    )

    winner, status_ = ("alice", "approved") if approve_first else ("bob", "denied")
    assert isinstance(first, Accepted), first
    assert isinstance(second, ControlError), second
    assert second.error == f"approval {question.approval_id} was already {status_} by {winner}"
    run = await status(bus, "p1")
    assert run.state is (RunState.EXECUTING if approve_first else RunState.CANCELLED)
    store = await bus.store(APPROVALS_BUCKET, PendingApproval)
    entry = await store.get(question.approval_id)
    assert entry is not None
    assert (entry.value.status, entry.value.answered_by) == (status_, winner)
    # and in a later step it is refused the same way
    again = await ask(bus, "approve", Approve(approval_id=question.approval_id, by="carol"))
    assert isinstance(again, ControlError)
    assert again.error == second.error


async def test_an_answer_sent_again_after_its_record_was_lost_is_accepted_and_recorded(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The step that took the answer stored the run, then died before the answer's record: the
    approve sent again found the run no longer waiting and was refused ("changes nothing"),
    though it had taken effect, and the question stayed pending."""
    own = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    dies = DiesBefore(own, f"$KV.{APPROVALS_BUCKET}.", armed=False, prefix=True)
    own.pipeline = dies
    try:
        async with running_coordinator(Coordinator(own, name="coord-lost-answer")):
            plan = [TaskSpec(id="x", title="x")]
            await ask(bus, "submit", SubmitRun(run_id="p2", goal="g", plan=plan, approve_plan=True))
            listed = await ask(bus, "approvals", ListApprovals())
            assert isinstance(listed, ApprovalList)
            [question] = listed.approvals
            dies.armed = True
            reply = await ask(bus, "approve", Approve(approval_id=question.approval_id, by="ana"))
            assert dies.died
            assert isinstance(reply, Accepted), reply  # sent again by the client, recognised
            assert reply.detail == "already approved"
            other = await ask(bus, "deny", Deny(approval_id=question.approval_id, by="bo"))
            run = await status(bus, "p2")
    finally:
        await own.close()

    assert isinstance(other, ControlError)
    assert other.error == f"approval {question.approval_id} was already approved by ana"
    assert run.state is RunState.EXECUTING
    store = await bus.store(APPROVALS_BUCKET, PendingApproval)
    entry = await store.get(question.approval_id)
    assert entry is not None
    assert (entry.value.status, entry.value.answered_by) == ("approved", "ana")
