"""Every token a run's work spent is counted in the run, also when no result carries it: work
retried after it spent (the worker's `WorkRetried`), work handed back to wait for a person
(`ApprovalNeeded.usage`). Everything real: the coordinator, the safety gate with the default
policy, workers on the bus."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.msg import Msg

from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus, RetryLater
from codeyard.bus.connection import MSG_ID_HEADER
from codeyard.bus.gate_client import BusGateClient, require_clearance
from codeyard.bus.subjects import COORDINATOR_CONSUMER, RESULT_STREAM, result_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    CodeRequest,
    CodeResult,
    ListApprovals,
    Patch,
    Result,
    ReviewRequest,
    ReviewResult,
    RunState,
    SubmitRun,
    TaskSpec,
    TestRequest,
    TestResult,
    Usage,
    UsageReported,
    WorkItem,
    decode,
    encode,
)
from codeyard.testing.scripted_worker import new_file_patch
from tests.coordinator.harness import (
    ask,
    patched,
    run_events,
    running_coordinator,
    status,
    wait_until,
    work_for_coders,
    workers_answering,
)

ASKS = "make integration-test"  # not a known test command: the default policy asks a person
CODING = Usage(calls=1, prompt_tokens=1000, completion_tokens=100)
TESTING = Usage(calls=1, prompt_tokens=200, completion_tokens=20)
REVIEWING = Usage(calls=1, prompt_tokens=30, completion_tokens=3)


class Roles:
    """The coder's first delivery pays for an answer and then finds the model gone (retried);
    the tester pays for an answer before its command goes to the gate, which asks a person."""

    def __init__(self, bus: Bus) -> None:
        self.gate = BusGateClient(bus)
        self.deliveries = Counter[str]()

    async def answer(self, item: WorkItem) -> Result:
        self.deliveries[type(item).__name__] += 1
        if isinstance(item, CodeRequest):
            if self.deliveries["CodeRequest"] == 1:
                raise RetryLater("the model is unavailable", delay=0.05, usage=CODING)
            patch = Patch(text=new_file_patch(f"notes/{item.task_id}.txt", "done"))
            return CodeResult(patch=patch, usage=CODING)
        if isinstance(item, TestRequest):
            await require_clearance(
                self.gate, item, "run_command", ASKS, role="tester", spent=TESTING
            )
            return TestResult(passed=True, output="1 passed", usage=TESTING)
        return ReviewResult(approved=True, usage=REVIEWING)


@pytest.fixture
async def roles(bus: Bus) -> AsyncIterator[Roles]:
    gate = await SafetyGate(bus, load_policy(None)).serve()
    roles = Roles(bus)
    async with workers_answering(bus, roles.answer):
        yield roles
    await gate.unsubscribe()


async def approve_when_asked(bus: Bus) -> None:
    for _ in range(300):
        reply = await ask(bus, "approvals", ListApprovals())
        assert isinstance(reply, ApprovalList)
        if reply.approvals:
            [question] = reply.approvals
            assert isinstance(
                await ask(bus, "approve", Approve(approval_id=question.approval_id)), Accepted
            )
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the tester's command was never sent to a person")


async def test_tokens_of_retried_and_parked_work_are_counted_in_the_run(
    bus: Bus, roles: Roles
) -> None:
    plan = [TaskSpec(id="a", title="a")]
    async with running_coordinator(Coordinator(bus, name="coord-test")):
        await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
        await approve_when_asked(bus)
        run = await wait_until(bus, "r1", timeout=60)
        events = await run_events(bus, "r1")

    assert run.state is RunState.DONE, run.error
    assert roles.deliveries == Counter(CodeRequest=2, TestRequest=2, ReviewRequest=1)
    # two coder deliveries, two tester ones (before and after the approval), one review
    assert run.usage == CODING + CODING + TESTING + TESTING + REVIEWING
    # and the report, which sums the usage events by role, sees the same
    reported = Counter[str]()
    for event in events:
        if isinstance(event, UsageReported):
            reported[event.role] += event.usage.total_tokens
    assert reported == Counter(coder=2200, tester=440, review=33)


# The model each role's results name, as the built-in agents name the one that answered.
MODELS = {
    "coder": "gpt-4o-2024-08-06",
    "tester": "gpt-4o-mini",
    "review": "claude-sonnet",
    "review.strict": "llama-3.1-8b",
}


class SiblingReviewers:
    """Two reviewers per task. On the first attempt `review.strict` rejects at once, while
    `review` answers only once the task went back to coding: its answer comes too late to be
    applied, but its tokens are spent."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def answer(self, item: WorkItem) -> Result:
        if isinstance(item, CodeRequest):
            patch = Patch(text=new_file_patch(f"notes/{item.attempt}.txt", "done"))
            return CodeResult(patch=patch, usage=CODING, model=MODELS["coder"])
        if isinstance(item, TestRequest):
            return TestResult(passed=True, output="1 passed", usage=TESTING, model=MODELS["tester"])
        assert isinstance(item, ReviewRequest)
        model = MODELS[item.reviewer]
        if item.attempt == 1 and item.reviewer == "review.strict":
            return ReviewResult(
                reviewer=item.reviewer, approved=False, usage=REVIEWING, model=model
            )
        if item.attempt == 1:
            await wait_until_attempt(self.bus, "r1", item.task_id, 2)
        return ReviewResult(reviewer=item.reviewer, approved=True, usage=REVIEWING, model=model)


async def wait_until_attempt(bus: Bus, run_id: str, task_id: str, attempt: int) -> None:
    for _ in range(300):
        if (await status(bus, run_id)).tasks[task_id].attempt >= attempt:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached attempt {attempt}")


async def all_results_taken(bus: Bus) -> None:
    """Wait until the coordinator took every result stored (applied and acked)."""
    for _ in range(300):
        info = await bus.js.consumer_info(RESULT_STREAM, COORDINATOR_CONSUMER)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the coordinator left results untaken")


async def test_tokens_of_an_answer_too_late_to_apply_are_counted_once(bus: Bus) -> None:
    reviews: list[bytes] = []  # as the built-in reviewer published them

    async def keep(msg: Msg) -> None:
        reviews.append(msg.data)

    await bus.nc.subscribe(result_subject("review"), cb=keep)
    plan = [TaskSpec(id="a", title="a")]
    roles = ("coder", "tester", "review", "review.strict")
    async with (
        workers_answering(bus, SiblingReviewers(bus).answer, roles),
        running_coordinator(Coordinator(bus, name="coord-test")),
    ):
        submit = SubmitRun(run_id="r1", goal="g", plan=plan, reviewers=list(roles[2:]))
        await ask(bus, "submit", submit)
        run = await wait_until(bus, "r1", timeout=60)
        # The late answer comes again, as after a failover (stored, not acked yet): the same
        # result, in a message of its own.
        late = next(data for data in reviews if decode(data, ReviewResult).attempt == 1)
        await bus.nc.publish(result_subject("review"), late, headers={MSG_ID_HEADER: "again"})
        await all_results_taken(bus)
        again = await status(bus, "r1")
        events = await run_events(bus, "r1")

    assert run.state is RunState.DONE, run.error
    # two attempts, each coded, tested and reviewed by both; the late review counted once
    both = CODING + TESTING + REVIEWING + REVIEWING
    assert run.usage == both + both
    assert again.usage == run.usage
    reported = Counter[str]()
    named: set[tuple[str, str]] = set()
    for event in events:
        if isinstance(event, UsageReported):
            reported[event.role] += event.usage.total_tokens
            named.add((event.role, event.model))
    assert reported == Counter({"coder": 2200, "tester": 440, "review": 66, "review.strict": 66})
    # each usage event names the model its result named, the late review's too
    assert named == set(MODELS.items())


async def test_the_usage_of_an_answer_without_a_trace_is_reported_in_an_event_that_reads(
    bus: Bus,
) -> None:
    """An answer may leave `trace_id` out (taken as the run's); its usage event may not: one
    with none could not be read back, and a new leader could not publish it again."""
    plan = [TaskSpec(id="a", title="a")]
    async with running_coordinator(Coordinator(bus, name="coord-traceless")):
        await ask(bus, "submit", SubmitRun(run_id="r3", goal="g", plan=plan))
        [item] = await work_for_coders(bus, 1)
        answer = msgspec.structs.replace(patched(item, "+x"), trace_id="", usage=CODING)
        await bus.js.publish(result_subject("coder"), encode(answer))
        for _ in range(100):
            usage = [e for e in await run_events(bus, "r3") if isinstance(e, UsageReported)]
            if usage:
                break
            await asyncio.sleep(0.1)
    assert [(event.trace_id, event.usage) for event in usage] == [("r3", CODING)]
