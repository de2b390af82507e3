"""Work proofs: a coordinator with a key takes only answers that copy their work item's proof,
so a worker cannot answer work it was not given (a coder passing its own task's review)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from codeyard.bus import Bus
from codeyard.bus.service_key import ServiceKey
from codeyard.bus.subjects import APPROVALS_BUCKET, result_subject
from codeyard.coordinator.service import Coordinator
from codeyard.coordinator.work_items import submission_trace
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    CodeRequest,
    ListApprovals,
    PendingApproval,
    Result,
    ReviewRequest,
    ReviewResult,
    RunState,
    SubmitRun,
    TaskSpec,
    TaskState,
    WorkItem,
    encode,
)
from tests.coordinator.harness import (
    ask,
    running_coordinator,
    scripted_coder,
    status,
    submit,
    wait_for_task,
    wait_until,
    workers_of,
)
from tests.coordinator.test_poisoned_results import dead_letters

KEY = "k" * 43


async def test_answers_copy_the_proof_and_the_run_completes(bus: Bus) -> None:
    coder = scripted_coder()
    handlers = {"coder": coder, "tester": coder, "review": coder}
    seen: list[str] = []

    async def coding(item: WorkItem) -> Result:
        seen.append(item.proof)
        return await coder(item)

    async with (
        running_coordinator(Coordinator(bus, name="coord-proofs", service_key=ServiceKey(KEY))),
        workers_of(bus, handlers | {"coder": coding}),
    ):
        await submit(bus, [TaskSpec(id="a", title="a"), TaskSpec(id="b", title="b", deps=["a"])])
        run = await wait_until(bus, "run1")
    assert run.state is RunState.DONE, run.error
    assert len(seen) == 2
    assert all(len(proof) == 32 for proof in seen), seen


async def test_an_answer_to_work_not_given_changes_nothing(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """The coder publishes approvals for its own task on the reviewer's subject, as JetStream
    would replay them for it: without a proof, with its own proof, and unreadable. None is
    taken; the task waits for its real review, which merges it."""
    caplog.set_level(logging.WARNING)
    coder = scripted_coder()
    given: list[CodeRequest] = []
    review_asked = asyncio.Event()
    review_may_answer = asyncio.Event()

    async def coding(item: WorkItem) -> Result:
        assert isinstance(item, CodeRequest)
        given.append(item)
        return await coder(item)

    async def review(item: WorkItem) -> Result:
        assert isinstance(item, ReviewRequest)
        review_asked.set()
        await review_may_answer.wait()
        return ReviewResult(approved=True)

    handlers = {"coder": coding, "tester": coder, "review": review}
    async with (
        running_coordinator(Coordinator(bus, name="coord-forged", service_key=ServiceKey(KEY))),
        workers_of(bus, handlers),
    ):
        await submit(bus, [TaskSpec(id="a", title="a")])
        await review_asked.wait()
        run = await status(bus, "run1")
        envelope = {
            "run_id": "run1",
            "task_id": "a",
            "attempt": run.tasks["a"].attempt,
            "trace_id": submission_trace(run),
        }
        for proof in ("", given[0].proof):
            copy = ReviewResult(**envelope, approved=True, proof=proof)  # type: ignore[arg-type]
            await bus.js.publish(result_subject("review"), encode(copy))
        unreadable = json.dumps(envelope | {"type": "ReviewResult", "approved": "yes"})
        await bus.js.publish(result_subject("review"), unreadable.encode())
        letters = await dead_letters(bus)
        for _ in range(100):
            if len(letters) >= 3:
                break
            await asyncio.sleep(0.1)
            letters = await dead_letters(bus)
        assert len(letters) == 3, letters
        assert (await status(bus, "run1")).tasks["a"].state is TaskState.REVIEWING
        assert caplog.text.count("its proof is not that of the work it claims to answer") == 2
        review_may_answer.set()
        run = await wait_for_task(bus, "run1", "a", TaskState.MERGED)
    assert run.tasks["a"].attempt == 1  # the forgeries failed nothing either


async def test_a_persons_answer_is_recorded_with_the_seal_the_gate_honours(bus: Bus) -> None:
    key = ServiceKey(KEY)
    plan = [TaskSpec(id="x", title="x")]
    async with running_coordinator(Coordinator(bus, name="coord-sealing", service_key=key)):
        await ask(bus, "submit", SubmitRun(run_id="r2", goal="g", plan=plan, approve_plan=True))
        listed = await ask(bus, "approvals", ListApprovals())
        assert isinstance(listed, ApprovalList)
        [pending] = listed.approvals
        assert not key.sealed(pending)  # a question is not an answer
        answered = await ask(bus, "approve", Approve(approval_id=pending.approval_id, by="ana"))
        assert isinstance(answered, Accepted), answered
    approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
    record = await approvals.get(pending.approval_id)
    assert record is not None
    assert (record.value.status, record.value.answered_by) == ("approved", "ana")
    assert key.sealed(record.value)
