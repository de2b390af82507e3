"""What a new leader makes of the store a coordinator left when it died in the middle of a step."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors
import pytest
from prometheus_client import REGISTRY

from codeyard.bus import Bus, EmbeddedNats, Topology
from codeyard.bus.result_sender import ResultSender
from codeyard.bus.subjects import (
    APPROVALS_BUCKET,
    WORK_STREAM,
    ctl_subject,
    journal_subject,
    result_subject,
)
from codeyard.coordinator.run_store import RunStore, StoredRun
from codeyard.coordinator.service import Coordinator, _early_delay, early_patience
from codeyard.coordinator.work_items import derived_id, submission_trace
from codeyard.follow import RunRefused, existing_run
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    CodeRequest,
    CodeResult,
    ControlError,
    Deny,
    ListApprovals,
    Patch,
    PendingApproval,
    PlanRequest,
    PlanResult,
    Result,
    ReviewResult,
    SubmitRun,
    TaskSpec,
    TestRequest,
    TestResult,
    WorkItem,
    encode,
)
from codeyard.schemas.model import Run, RunState, Task, TaskState, Usage
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    ask,
    patched,
    running_coordinator,
    status,
    submit,
    wait_for_task,
    wait_until,
    work_for_coders,
    workers_answering,
)
from tests.coordinator.plans import new_run, spec
from tests.coordinator.store_faults import (
    DiesBefore,
    dies_before_the_header,
    submit_until_it_dies,
)


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
            dies_before_the_header(bus, "run1"), [await store.save(stored, ["t0"], bus.pipeline)]
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


async def approve_the_plan_through(
    coordinator_bus: Bus, bus: Bus, fault: DiesBefore, run_id: str
) -> str:
    """Submit a run whose plan waits for approval, then approve it while `fault` kills the
    coordinator in that step; returns the approval's id."""
    async with running_coordinator(Coordinator(coordinator_bus, name="dies", capacity=4)):
        plan = [spec("x")]
        await ask(bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=plan, approve_plan=True))
        listed = await ask(bus, "approvals", ListApprovals())
        assert isinstance(listed, ApprovalList)
        [question] = listed.approvals
        fault.armed = True
        approve = Approve(approval_id=question.approval_id, by="ana")
        with contextlib.suppress(nats.errors.TimeoutError):  # it died before answering
            await bus.nc.request(ctl_subject("approve"), encode(approve), timeout=2)
        assert fault.died
        return question.approval_id


async def test_an_answer_lost_with_its_step_can_be_given_again(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The coordinator died before the step that took the approval was stored: the answer
    was not stored either, so the run still waits and the person answers again."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = DiesBefore(coordinator_bus, journal_subject("r1"), armed=False)
    coordinator_bus.pipeline = fault
    try:
        approval_id = await approve_the_plan_through(coordinator_bus, bus, fault, "r1")
        async with running_coordinator(Coordinator(coordinator_bus, name="successor")):
            assert (await status(bus, "r1")).state is RunState.PLAN_APPROVAL
            again = await ask(bus, "approve", Approve(approval_id=approval_id, by="ana"))
            assert isinstance(again, Accepted), again
            assert (await status(bus, "r1")).state is RunState.EXECUTING
    finally:
        await coordinator_bus.close()


async def test_a_question_answered_after_the_run_moved_on_is_closed(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The coordinator died after the run took the approval and before the answer was
    stored: the question showed, pending, until answered again. The run kept the answer: its
    successor records it, and an answer sent now is told which one was taken."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    # armed once the question is stored: dies before storing the answer
    fault = DiesBefore(coordinator_bus, f"$KV.{APPROVALS_BUCKET}.", armed=False, prefix=True)
    coordinator_bus.pipeline = fault
    try:
        question = await approve_the_plan_through(coordinator_bus, bus, fault, "r1")
        async with running_coordinator(Coordinator(coordinator_bus, name="successor")):
            assert (await status(bus, "r1")).state is RunState.EXECUTING
            listed = await ask(bus, "approvals", ListApprovals())
            assert isinstance(listed, ApprovalList)
            assert listed.approvals == []
            late = await ask(bus, "deny", Deny(approval_id=question, by="timeout"))
            assert isinstance(late, ControlError)
            assert late.error == f"approval {question} was already approved by ana"
            assert (await status(bus, "r1")).state is RunState.EXECUTING  # not cancelled
    finally:
        await coordinator_bus.close()


async def test_a_question_stored_by_a_lost_step_is_answered_only_once_asked_again(
    bus: Bus,
) -> None:
    """A step stored its question (plan approval), then was lost before the run that asked it
    was stored: the reloaded run asks it again, with the same id, once the plan comes again.
    Until then the question is not listed and an answer is refused without being recorded;
    recorded, it would leave the run waiting for a question nobody could answer any more."""
    async with running_coordinator(Coordinator(bus, name="coord", capacity=4)):
        submission = SubmitRun(run_id="r1", goal="g", approve_plan=True)
        assert isinstance(await ask(bus, "submit", submission), Accepted)
        run = await status(bus, "r1")  # planning: nobody plans yet
        approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
        question_id = derived_id("r1", run.submission, "plan", 1)[:16]
        left = PendingApproval(
            approval_id=question_id,
            run_id="r1",
            attempt=1,
            action="plan",
            detail="the plan",
            submission=run.submission,
        )
        await approvals.create(question_id, left)

        early = await ask(bus, "approve", Approve(approval_id=question_id, by="ana"))
        listed_early = await ask(bus, "approvals", ListApprovals())
        stored = await approvals.get(question_id)
        async with workers_answering(bus, answer_at_once, ("planner",)):
            for _ in range(200):
                if (await status(bus, "r1")).state is RunState.PLAN_APPROVAL:
                    break
                await asyncio.sleep(0.05)
            listed = await ask(bus, "approvals", ListApprovals())
            approved = await ask(bus, "approve", Approve(approval_id=question_id, by="ana"))
            state = (await status(bus, "r1")).state

    assert isinstance(early, ControlError)
    assert "has not asked this yet" in early.error
    assert isinstance(listed_early, ApprovalList)
    assert listed_early.approvals == []
    assert stored is not None
    assert stored.value.status == "pending"  # not recorded
    assert isinstance(listed, ApprovalList)
    assert [approval.approval_id for approval in listed.approvals] == [question_id]
    assert isinstance(approved, Accepted), approved
    assert state is RunState.EXECUTING


async def test_denying_a_budget_question_the_run_no_longer_asks_does_not_cancel_it(
    bus: Bus,
) -> None:
    """A budget question left pending by a crash (the run was resumed meanwhile) runs out of
    time and is denied: the run, which no longer waits for it, goes on."""
    async with running_coordinator(Coordinator(bus, name="coord", capacity=4)):
        await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=[spec("x")]))
        approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
        left = PendingApproval(approval_id="q0", run_id="r1", action="budget", detail="over")
        await approvals.put("q0", left)

        denied = await ask(bus, "deny", Deny(approval_id="q0", by="timeout"))

        assert isinstance(denied, ControlError)
        assert (await status(bus, "r1")).state is RunState.EXECUTING
        entry = await approvals.get("q0")
        assert entry is not None
        assert entry.value.status == "denied"  # closed: not listed, nor expired, again


async def answer_at_once(item: WorkItem) -> Result:
    """Every role's work done: one task planned, coded, tested, approved."""
    if isinstance(item, PlanRequest):
        return PlanResult(tasks=[spec("x")])
    if isinstance(item, CodeRequest):
        return CodeResult(patch=Patch(text="+"))
    if isinstance(item, TestRequest):
        return TestResult(passed=True)
    return ReviewResult(approved=True)


async def test_reviews_a_new_leader_sends_again_are_dropped_as_copies_of_those_sent(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """A new leader sends a run's outstanding work again under the ids it was sent with, so
    that JetStream drops the copies. A task's reviewers' items were counted one by one when
    sent, and not when sent again: all but the last reviewer's got new ids, and were stored,
    done and paid for twice."""
    plan = [TaskSpec(id="a", title="a", reviewers=["review", "review.security"])]
    for name in ("c1", "c2"):
        coordinator_bus = await Bus.connect(nats_server.url, name=name, topology=TEST_TOPOLOGY)
        coordinator = Coordinator(coordinator_bus, name=name, capacity=4)
        try:
            async with (
                running_coordinator(coordinator),
                workers_answering(bus, answer_at_once, ("coder", "tester")),
            ):
                if name == "c1":  # sends the code, test and two review items
                    await submit(bus, plan, "r1")
                    await wait_for_task(bus, "r1", "a", TaskState.REVIEWING)
                    continue
                for _ in range(200):  # sends the two reviews again once it leads
                    if coordinator.stats.dispatched >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert coordinator.stats.dispatched == 2
        finally:
            await coordinator_bus.close()
    # (the coder's and tester's items were acked, and left the work queue)
    assert (await bus.js.stream_info(WORK_STREAM)).state.messages == 2


@pytest.mark.parametrize("plan", [None, [spec("x")]], ids=["planned", "with its own plan"])
async def test_a_submission_cut_before_its_header_is_worked_on_when_submitted_again(
    nats_server: EmbeddedNats, bus: Bus, plan: list[TaskSpec] | None
) -> None:
    """A worker answered the first submission's request (the plan request, or the code request
    of a submission that carries its plan), which no run owned (ignored); the same submission
    again sends requests that are not dropped as copies of those."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = dies_before_the_header(coordinator_bus, "r1")
    coordinator_bus.pipeline = fault
    submission = SubmitRun(run_id="r1", goal="g", plan=plan)
    try:
        async with (
            running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)),
            workers_answering(bus, answer_at_once, ("planner", "coder", "tester", "review")),
        ):
            # never answered: the coordinator dies in the step (asked again while it does not
            # listen yet, which nats-py answers at once with no responders)
            first = None
            for _ in range(300):
                if fault.died:
                    break
                if first is None or first.done():
                    first = asyncio.create_task(
                        bus.nc.request(ctl_subject("submit"), encode(submission), timeout=30)
                    )
                    first.add_done_callback(lambda done: done.cancelled() or done.exception())
                await asyncio.sleep(0.1)
            assert first is not None
            first.cancel()
            assert fault.died
            assert isinstance(await ask(bus, "submit", submission), Accepted)
            run = await wait_until(bus, "r1", timeout=30)
    finally:
        await coordinator_bus.close()
    assert run.state is RunState.DONE
    assert list(run.tasks) == ["x"]


async def test_a_late_answer_to_a_cut_submission_is_not_taken_for_the_run_submitted_again(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The same run id submitted again after a cut, with another plan: a coder's late answer to
    the first submission's task `x` must not be applied to the second's task `x`. Its work item
    names its submission in `trace_id`, which every answer copies."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = dies_before_the_header(coordinator_bus, "r1")
    coordinator_bus.pipeline = fault
    first = SubmitRun(run_id="r1", goal="g", plan=[TaskSpec(id="x", title="first x")])
    second = SubmitRun(run_id="r1", goal="g", plan=[TaskSpec(id="x", title="another x")])
    coordinator = Coordinator(coordinator_bus, name="c1", capacity=4)
    sender = ResultSender(bus.pipeline, result_subject("coder"))

    try:
        async with running_coordinator(coordinator):
            await submit_until_it_dies(bus, first, fault)
            assert isinstance(await ask(bus, "submit", second), Accepted)
            items = {item.task.title: item for item in await work_for_coders(bus, 2)}
            await sender.send(patched(items["first x"], "+ the first x"))
            for _ in range(200):
                if coordinator.stats.ignored:
                    break
                await asyncio.sleep(0.05)
            assert (await status(bus, "r1")).tasks["x"].state is TaskState.CODING
            await sender.send(patched(items["another x"], "+ another x"))
            run = await wait_for_task(bus, "r1", "x", TaskState.TESTING)
    finally:
        await coordinator_bus.close()
    assert coordinator.stats.ignored == 1
    assert run.tasks["x"].patch == Patch(text="+ another x")


async def test_a_run_whose_record_cannot_be_read_does_not_stop_the_next_leader(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    await store.confirm(bus.pipeline, [await store.save(StoredRun(new_run()), [], bus.pipeline)])
    await bus.js.publish(journal_subject("run1"), b'{"header": {"usage": {"cost_usd": null}}}')

    async with running_coordinator(Coordinator(bus, name="successor", capacity=4)):
        assert isinstance(await ask(bus, "submit", SubmitRun(run_id="run2", goal="g")), Accepted)
        # a client choosing a run id cannot tell whether that one is free: it is not told so
        with pytest.raises(RunRefused, match="cannot tell whether run run1 exists"):
            await existing_run(bus, "run1")
        assert await existing_run(bus, "run3") is None


async def run_losing_a_step(
    nats_server: EmbeddedNats, bus: Bus, lost_with: type[WorkItem], early: type[WorkItem]
) -> tuple[Run, int]:
    """Run one task (planned, unless the planner's answer is the one lost) through a coordinator
    whose step taking the answer to `lost_with` dies before its journal entry, and whose worker
    answers the `early` work that step sent only after the reload, before that answer comes
    back (ack_wait). Returns the run and how often `early` work was done."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = DiesBefore(coordinator_bus, journal_subject("r1"), armed=False)
    coordinator_bus.pipeline = fault
    done = 0

    async def answer(item: WorkItem) -> Result:
        nonlocal done
        if isinstance(item, lost_with):
            await asyncio.sleep(0.5)  # the step that sent this request is stored by then
            fault.armed = True  # the step that takes its answer dies
        if isinstance(item, early):
            done += 1
            await asyncio.sleep(1.0)  # after the reload, before that answer's redelivery
        return await answer_at_once(item)

    plan = None if lost_with is PlanRequest else [spec("x")]
    try:
        async with (
            running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)),
            workers_answering(bus, answer, ("planner", "coder", "tester", "review")),
        ):
            submission = SubmitRun(run_id="r1", goal="g", plan=plan)
            assert isinstance(await ask(bus, "submit", submission), Accepted)
            run = await wait_until(bus, "r1", timeout=30)
    finally:
        await coordinator_bus.close()
    assert fault.died
    return run, done


async def test_an_answer_that_comes_before_the_step_that_asked_for_it_is_redone_waits(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """The step that took the code result sent the test request, then died before its journal
    entry: the reloaded run still waits for the coder. The tester's answer comes first (the
    code result is redelivered only after ack_wait), and it is kept for later, not dropped:
    once the code result is applied again (its test request, re-sent with the same id, is
    dropped as a duplicate and never answered again), the kept answer moves the task on."""
    run, tested = await run_losing_a_step(nats_server, bus, CodeRequest, TestRequest)
    assert run.state is RunState.DONE
    assert run.tasks["x"].attempt == 1
    assert tested == 1


async def test_a_coder_answer_that_comes_before_the_lost_plan_step_is_redone_waits(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """As above, with the step that took the plan lost: the reloaded run is still planning
    when the coder's answer comes."""
    run, coded = await run_losing_a_step(nats_server, bus, PlanRequest, CodeRequest)
    assert run.state is RunState.DONE
    assert run.tasks["x"].attempt == 1
    assert coded == 1


def test_an_early_answer_comes_again_for_twice_the_ack_wait_and_two_minutes_at_least() -> None:
    for ack_wait in (2.0, 30.0, 3600.0, 86400.0):
        deliveries = early_patience(ack_wait)
        waited = sum(_early_delay(n) for n in range(1, deliveries))
        assert waited >= max(2 * ack_wait, 120.0)
        assert waited - _early_delay(deliveries - 1) < max(2 * ack_wait, 120.0)  # no more
    assert early_patience(30.0) == 30


async def test_a_coordinator_waits_for_early_answers_as_long_as_its_ack_wait_asks(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    assert Coordinator(bus).early_deliveries == early_patience(bus.topology.ack_wait)
    slow = await Bus.connect(nats_server.url, topology=Topology(ack_wait=600))
    try:
        assert Coordinator(slow).early_deliveries == early_patience(600) > 30
    finally:
        await slow.close()


async def test_an_answer_still_early_after_its_deliveries_is_dropped_and_its_spend_counted(
    bus: Bus,
) -> None:
    """An early answer no lost step explains (the tester's, for work never sent) comes again a
    few times, then is dropped; what it spent is counted then, once, and not while it waits."""
    early = ("codeyard_coordinator_results_total", {"outcome": "early"})
    before = REGISTRY.get_sample_value(*early) or 0.0
    spent = Usage(calls=1, prompt_tokens=5, completion_tokens=2, cost_usd=0.25)
    coordinator = Coordinator(bus, name="c1", capacity=4, early_deliveries=3)
    async with running_coordinator(coordinator):
        submission = SubmitRun(run_id="r1", goal="g", plan=[spec("x")])
        assert isinstance(await ask(bus, "submit", submission), Accepted)
        # no workers: x stays in coding
        trace = submission_trace(await status(bus, "r1"))  # copied from the work, as workers do
        answer = TestResult(
            run_id="r1", task_id="x", attempt=1, trace_id=trace, passed=True, usage=spent
        )
        await ResultSender(bus.pipeline, result_subject("tester")).send(answer)
        for _ in range(100):
            run = await status(bus, "r1")
            if run.usage.calls:
                break
            await asyncio.sleep(0.05)
    assert run.usage == spent
    assert run.tasks["x"].state is TaskState.CODING
    assert (REGISTRY.get_sample_value(*early) or 0.0) - before == 3
