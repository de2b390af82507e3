"""The control API on cy.ctl.*: what the CLI and dashboard ask the coordinator."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from codeyard.bus import Bus, PullWorker
from codeyard.bus.subjects import ctl_subject
from codeyard.coordinator.service import Commit, Coordinator
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    Budget,
    CancelRun,
    ControlError,
    ControlReply,
    Deny,
    ListApprovals,
    Patch,
    PlanRequest,
    PlanResult,
    RepoRef,
    Result,
    ReviewRequest,
    ReviewResult,
    RunState,
    StatusQuery,
    SubmitRun,
    TaskSpec,
    TaskState,
    TestRequest,
    TestResult,
    UsageReported,
    WorkCancelled,
    WorkItem,
    decode,
    encode,
)
from codeyard.schemas.messages import ALREADY_CANCELLED
from codeyard.testing.scripted_worker import Script
from tests.coordinator.harness import (
    ask,
    run_events,
    running_coordinator,
    scripted_coder,
    status,
    wait_until,
    workers_answering,
    workers_of,
)


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-test", capacity=4)) as coordinator:
        yield coordinator


@pytest.fixture
async def workers(bus: Bus, tmp_path: Path) -> AsyncIterator[None]:
    """Scripted workers for every role, in this process; the planner proposes a -> b -> c."""
    plan = [
        TaskSpec(id="a", title="models"),
        TaskSpec(id="b", title="api", deps=["a"]),
        TaskSpec(id="c", title="docs", deps=["b"]),
    ]
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(msgspec.json.encode(plan))
    args = argparse.Namespace(
        plan=plan_file, fail_tests="", reject="", hang_on="", delay=0.0, log=None, tokens=100
    )
    roles = ("planner", "coder", "tester", "review", "review.security")
    async with workers_answering(bus, Script(args).answer, roles):
        yield


def cyclic_plan() -> list[TaskSpec]:
    return [
        TaskSpec(id="a", title="a", deps=["c"]),
        TaskSpec(id="b", title="b", deps=["a"]),
        TaskSpec(id="c", title="c", deps=["b"]),
    ]


async def test_goal_without_plan_is_planned_then_executed(
    bus: Bus, coordinator: Coordinator, workers: None
) -> None:
    reply = await ask(bus, "submit", SubmitRun(goal="add a feature"))
    assert isinstance(reply, Accepted)
    run = await wait_until(bus, reply.run_id, timeout=30)
    assert run.state is RunState.DONE
    assert [run.tasks[t].state for t in "abc"] == [TaskState.MERGED] * 3
    assert run.tasks["a"].patch is not None
    assert "+++ b/notes/a.txt" in run.tasks["a"].patch.text
    # what each result's LLM calls cost is on the events, by role, for the report
    spent = [e for e in await run_events(bus, reply.run_id) if isinstance(e, UsageReported)]
    assert sorted((e.role, e.task_id, e.usage.prompt_tokens) for e in spent) == [
        ("coder", "a", 100),
        ("coder", "b", 100),
        ("coder", "c", 100),
    ]


async def test_every_required_reviewer_must_approve(
    bus: Bus, coordinator: Coordinator, workers: None
) -> None:
    plan = [
        TaskSpec(id="x", title="x"),
        TaskSpec(id="y", title="y", deps=["x"], reviewers=["review.security"]),
    ]
    submit = SubmitRun(run_id="rv", goal="g", plan=plan, reviewers=["review", "review.security"])
    await ask(bus, "submit", submit)
    run = await wait_until(bus, "rv", timeout=30)
    assert run.state is RunState.DONE
    # the run's default applies where a task names none; a task's own list replaces it
    assert run.tasks["x"].approvals == {"review": True, "review.security": True}
    assert run.tasks["y"].approvals == {"review.security": True}


async def test_a_cyclic_plan_is_refused_naming_the_cycle(
    bus: Bus, coordinator: Coordinator
) -> None:
    reply = await ask(bus, "submit", SubmitRun(goal="g", plan=cyclic_plan()))
    assert isinstance(reply, ControlError)
    assert reply.field == "$.plan"
    assert "cycle" in reply.error
    assert "a -> " in reply.error


@pytest.mark.parametrize("goal", ["", "  \n\t "])
async def test_a_run_without_a_goal_is_refused(
    bus: Bus, coordinator: Coordinator, goal: str
) -> None:
    """The CLI refuses one; the control API took it, and the planner was paid to plan nothing."""
    reply = await ask(bus, "submit", SubmitRun(run_id="no-goal", goal=goal))
    assert isinstance(reply, ControlError)
    assert reply.field == "$.goal"
    assert reply.error == "the goal is empty: say what the run is to achieve"
    assert isinstance(await ask(bus, "status", StatusQuery(run_id="no-goal")), ControlError)


async def test_a_plan_wrong_in_a_thousand_places_is_refused_in_a_reply_that_decodes(
    bus: Bus, coordinator: Coordinator
) -> None:
    """(`ask` decodes the reply: one past the schema's 20,000 characters would fail there)"""
    plan = [TaskSpec(id=f"t{n}", title="t", deps=["missing"]) for n in range(1000)]
    reply = await ask(bus, "submit", SubmitRun(goal="g", plan=plan))
    assert isinstance(reply, ControlError)
    assert reply.field == "$.plan"
    assert "t0" in reply.error
    assert reply.error.endswith("characters cut]")


async def test_bad_requests_get_an_error_naming_the_problem(
    bus: Bus, coordinator: Coordinator
) -> None:
    raw = await bus.nc.request(ctl_subject("submit"), b'{"type":"SubmitRun","goal":7}', timeout=5)
    malformed = decode(raw.data, ControlReply)
    assert isinstance(malformed, ControlError)
    assert malformed.field == "$.goal"

    raw = await bus.nc.request(ctl_subject("status"), encode(CancelRun(run_id="x")), timeout=5)
    wrong_verb = decode(raw.data, ControlReply)
    assert isinstance(wrong_verb, ControlError)
    assert wrong_verb.error == "cy.ctl.status takes a StatusQuery, not a CancelRun"

    unknown = await ask(bus, "status", StatusQuery(run_id="nope"))
    assert isinstance(unknown, ControlError)
    assert "no run 'nope'" in unknown.error

    cancel = await ask(bus, "cancel", CancelRun(run_id="nope"))
    assert isinstance(cancel, ControlError)

    unnamed = await ask(bus, "cancel", CancelRun(run_id=""))
    assert isinstance(unnamed, ControlError)
    assert (unnamed.error, unnamed.field) == ("name the run to cancel", "$.run_id")

    not_utf8 = b'{"type":"CancelRun","run_id":"r1","reason":"\xff"}'
    raw = await bus.nc.request(ctl_subject("cancel"), not_utf8, timeout=5)
    undecodable = decode(raw.data, ControlReply)
    assert isinstance(undecodable, ControlError)
    assert undecodable.error.startswith("not valid UTF-8"), undecodable.error

    approval = await ask(bus, "approve", Approve(approval_id="missing"))
    assert isinstance(approval, ControlError)
    assert approval.field == "$.approval_id"

    # a typo would drop a dependency: refused, and no run made
    typo = b'{"type":"SubmitRun","run_id":"t","goal":"g","plan":[{"id":"a","title":"t","dep":[]}]}'
    raw = await bus.nc.request(ctl_subject("submit"), typo, timeout=5)
    unknown_field = decode(raw.data, ControlReply)
    assert isinstance(unknown_field, ControlError)
    assert unknown_field.field == "$.plan[0].dep"
    assert isinstance(await ask(bus, "status", StatusQuery(run_id="t")), ControlError)

    # and the coordinator still serves
    ok = await ask(
        bus, "submit", SubmitRun(run_id="fine", goal="g", plan=[TaskSpec(id="x", title="x")])
    )
    assert isinstance(ok, Accepted)


# (a consumer's deliveries come with a `$JS.ACK.` reply, which the server lets no client send)
@pytest.mark.parametrize("reply", ["", "cy.ctl.status"])
async def test_a_request_with_no_inbox_to_answer_is_refused(
    bus: Bus, coordinator: Coordinator, caplog: pytest.LogCaptureFixture, reply: str
) -> None:
    """JetStream publishes a direct get's answer or a consumer's deliveries to any subject its
    client names: a worker could replay stored bytes onto cy.ctl.approve. Such messages come
    with no reply subject, or a JetStream one, never an inbox."""
    caplog.set_level(logging.WARNING)
    submit = SubmitRun(run_id="unasked", goal="g", plan=[TaskSpec(id="x", title="x")])
    await bus.nc.publish(ctl_subject("submit"), encode(submit), reply=reply)
    await bus.nc.flush()
    for _ in range(200):
        if "names no inbox to answer" in caplog.text:
            break
        await asyncio.sleep(0.02)
    # a request asked the usual way is answered after it: the refused one was not taken
    assert isinstance(await ask(bus, "status", StatusQuery(run_id="unasked")), ControlError)
    assert f"refusing a request on {ctl_subject('submit')}" in caplog.text


@pytest.mark.parametrize(
    ("repo", "field"),
    [
        (RepoRef(snapshot="/home/other/.ssh"), "snapshot"),
        (RepoRef(head="3b18e51"), "head"),
    ],
)
async def test_a_submission_names_only_its_repositorys_path(
    bus: Bus, coordinator: Coordinator, repo: RepoRef, field: str
) -> None:
    """Where the run's code stands is the coordinator's to say: workers check it out."""
    refused = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", repo=repo))
    assert isinstance(refused, ControlError)
    assert refused.field == f"$.repo.{field}"
    assert refused.error.endswith("submit only the path")
    assert isinstance(await ask(bus, "status", StatusQuery(run_id="r1")), ControlError)


async def test_resubmitting_the_same_run_is_idempotent(bus: Bus, coordinator: Coordinator) -> None:
    plan = [TaskSpec(id="x", title="x")]
    first = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
    again = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
    other = await ask(bus, "submit", SubmitRun(run_id="r1", goal="another goal", plan=plan))
    assert isinstance(first, Accepted)
    assert isinstance(again, Accepted)
    assert again.detail == "already submitted"
    assert isinstance(other, ControlError)
    assert other.field == "$.run_id"
    assert other.error == "run id 'r1' is taken by a run with another goal"


async def test_resubmitting_a_run_id_with_other_settings_names_them(
    bus: Bus, coordinator: Coordinator
) -> None:
    """Only the same submission again is accepted: one with the same goal and another test
    command, say, would otherwise follow a run that does not do what it asked."""
    plan = [TaskSpec(id="x", title="x")]
    submitted = SubmitRun(run_id="r1", goal="g", plan=plan, test_command="make test")
    assert isinstance(await ask(bus, "submit", submitted), Accepted)
    spaced = msgspec.structs.replace(submitted, test_command="  make test ")
    assert isinstance(await ask(bus, "submit", spaced), Accepted)  # stored stripped

    for changes, named in (
        ({"test_command": "make check"}, "test command"),
        ({"test_command": ""}, "test command"),
        (
            {"reviewers": ["review", "review.style"], "approve_merge": True},
            "reviewers, merge approval",
        ),
        ({"goal": "h", "approve_plan": True}, "goal, plan approval"),
        ({"repo": RepoRef(path="/elsewhere")}, "repository"),
        ({"plan": [TaskSpec(id="x", title="x", description="another")]}, "plan"),
    ):
        other = await ask(bus, "submit", msgspec.structs.replace(submitted, **changes))
        assert isinstance(other, ControlError), changes
        assert other.error == f"run id 'r1' is taken by a run with another {named}"
    assert (await status(bus, "r1")).test_command == "make test"


async def test_resubmitting_an_ended_runs_id_with_another_plan_names_it(
    bus: Bus, coordinator: Coordinator
) -> None:
    """An ended run's record is read without its tasks; its plan was then never compared, and
    another plan under its id was taken for the same submission again."""
    plan = [TaskSpec(id="x", title="x")]
    submitted = SubmitRun(run_id="r9", goal="g", plan=plan)
    assert isinstance(await ask(bus, "submit", submitted), Accepted)
    assert isinstance(await ask(bus, "cancel", CancelRun(run_id="r9")), Accepted)
    assert (await status(bus, "r9")).state is RunState.CANCELLED
    again = await ask(bus, "submit", submitted)
    assert isinstance(again, Accepted), again
    other_plan = [TaskSpec(id="y", title="y")]
    other = await ask(bus, "submit", msgspec.structs.replace(submitted, plan=other_plan))
    assert isinstance(other, ControlError), other
    assert other.error == "run id 'r9' is taken by a run with another plan"


async def test_plan_approval_then_cancel(bus: Bus, coordinator: Coordinator) -> None:
    plan = [TaskSpec(id="x", title="x"), TaskSpec(id="y", title="y", deps=["x"])]
    await ask(bus, "submit", SubmitRun(run_id="r2", goal="g", plan=plan, approve_plan=True))
    assert (await status(bus, "r2")).state is RunState.PLAN_APPROVAL

    approvals = await ask(bus, "approvals", ListApprovals())
    assert isinstance(approvals, ApprovalList)
    [pending] = approvals.approvals
    assert (pending.run_id, pending.action) == ("r2", "plan")

    accepted = await ask(bus, "approve", Approve(approval_id=pending.approval_id, by="ana"))
    assert isinstance(accepted, Accepted)
    run = await status(bus, "r2")
    assert run.state is RunState.EXECUTING
    assert run.tasks["x"].state is TaskState.CODING  # no workers here: it waits for a coder
    after = await ask(bus, "approvals", ListApprovals())
    assert isinstance(after, ApprovalList)
    assert after.approvals == []

    cancelled = await ask(bus, "cancel", CancelRun(run_id="r2", reason="changed my mind"))
    assert isinstance(cancelled, Accepted)
    run = await status(bus, "r2")
    assert run.state is RunState.CANCELLED
    assert {task.state for task in run.tasks.values()} == {TaskState.CANCELLED}
    # Sent again (its reply lost, say): done already, not refused as for a run that is not.
    again = await ask(bus, "cancel", CancelRun(run_id="r2"))
    assert isinstance(again, Accepted), again
    assert again.detail == ALREADY_CANCELLED
    unknown = await ask(bus, "cancel", CancelRun(run_id="nope"))
    assert isinstance(unknown, ControlError), unknown


async def test_a_run_that_ended_is_said_to_have_ended(
    bus: Bus, coordinator: Coordinator, workers: None
) -> None:
    """Cancelling a finished run, or answering the question a cancelled run left, was refused
    as for a run that does not exist ("no open run"), and the question stayed listed."""
    await ask(
        bus, "submit", SubmitRun(run_id="ended", goal="g", plan=[TaskSpec(id="x", title="x")])
    )
    assert (await wait_until(bus, "ended", timeout=30)).state is RunState.DONE
    refused = await ask(bus, "cancel", CancelRun(run_id="ended"))
    assert isinstance(refused, ControlError)
    assert refused.error == "run ended has ended (done): nothing to cancel"

    plan = [TaskSpec(id="x", title="x")]
    await ask(bus, "submit", SubmitRun(run_id="left", goal="g", plan=plan, approve_plan=True))
    assert (await status(bus, "left")).state is RunState.PLAN_APPROVAL
    listed = await ask(bus, "approvals", ListApprovals(run_id="left"))
    assert isinstance(listed, ApprovalList)
    [question] = listed.approvals
    assert isinstance(await ask(bus, "cancel", CancelRun(run_id="left")), Accepted)
    answered = await ask(bus, "approve", Approve(approval_id=question.approval_id, by="ana"))
    assert isinstance(answered, ControlError)
    assert answered.error == (
        f"run left has ended (cancelled): the answer to approval {question.approval_id} is "
        "recorded, and changes nothing"
    )
    after = await ask(bus, "approvals", ListApprovals(run_id="left"))
    assert isinstance(after, ApprovalList)
    assert after.approvals == []


async def test_denied_plan_cancels_the_run(bus: Bus, coordinator: Coordinator) -> None:
    plan = [TaskSpec(id="x", title="x")]
    await ask(bus, "submit", SubmitRun(run_id="r3", goal="g", plan=plan, approve_plan=True))
    approvals = await ask(bus, "approvals", ListApprovals())
    assert isinstance(approvals, ApprovalList)
    [pending] = approvals.approvals
    denied = await ask(bus, "deny", Deny(approval_id=pending.approval_id, reason="too broad"))
    assert isinstance(denied, Accepted)
    run = await status(bus, "r3")
    assert run.state is RunState.CANCELLED
    assert "too broad" in run.error


async def test_a_run_over_budget_waits_for_approval(
    bus: Bus, coordinator: Coordinator, workers: None
) -> None:
    # every coder result reports 100 tokens: the second one crosses the budget of 150
    plan = [TaskSpec(id="x", title="x"), TaskSpec(id="y", title="y", deps=["x"])]
    budget = Budget(max_tokens=150, max_cost_usd=5.0)
    await ask(bus, "submit", SubmitRun(run_id="r4", goal="g", plan=plan, budget=budget))
    for _ in range(100):
        run = await status(bus, "r4")
        if run.state is RunState.AWAITING_APPROVAL:
            break
        await asyncio.sleep(0.1)
    assert run.state is RunState.AWAITING_APPROVAL
    assert run.usage.total_tokens == 200
    approvals = await ask(bus, "approvals", ListApprovals())
    assert isinstance(approvals, ApprovalList)
    [pending] = approvals.approvals
    assert pending.action == "budget"
    assert "200 tokens used, budget 150" in pending.detail

    await ask(bus, "approve", Approve(approval_id=pending.approval_id, comment="worth it"))
    run = await wait_until(bus, "r4", timeout=30)
    assert run.state is RunState.DONE
    assert run.budget.max_tokens == 0  # approving the overrun lifted the exceeded limit
    assert run.budget.max_cost_usd == 5.0  # and kept the other


async def test_status_of_all_runs_lists_headers(bus: Bus, coordinator: Coordinator) -> None:
    for run_id in ("s1", "s2"):
        await ask(
            bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=[TaskSpec(id="x", title="x")])
        )
    reply = await ask(bus, "status", StatusQuery())
    assert reply.__class__.__name__ == "RunStatus"
    runs = reply.runs  # type: ignore[union-attr]
    assert [run.run_id for run in runs] == ["s1", "s2"]
    assert all(run.tasks == {} for run in runs)


class SlowSteps(Coordinator):
    """A busy coordinator: each step takes a tenth of a second to store."""

    async def _flush(self, commit: Commit) -> None:
        await asyncio.sleep(0.1)
        await super()._flush(commit)


async def test_requests_that_come_together_share_a_step(bus: Bus) -> None:
    """Each request waited for its reply before the next of the same verb reached the inbox:
    live views and dashboards polling a busy coordinator queued one step each."""
    async with running_coordinator(SlowSteps(bus, name="coord-slow")) as coordinator:
        before = coordinator.stats.steps
        replies = await asyncio.gather(*(ask(bus, "status", StatusQuery()) for _ in range(20)))
        steps = coordinator.stats.steps - before
    assert all(type(reply).__name__ == "RunStatus" for reply in replies)
    assert steps <= 5


async def test_cancelling_a_run_stops_the_work_in_flight(
    bus: Bus, coordinator: Coordinator
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()
    items: list[WorkItem] = []

    async def slow_coder(item: WorkItem) -> Result:
        items.append(item)
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        raise AssertionError("unreachable")

    stop = asyncio.Event()
    worker = asyncio.create_task(PullWorker(bus, "coder", slow_coder).run(stop, grace=1))
    plan = [TaskSpec(id="x", title="x")]
    await ask(bus, "submit", SubmitRun(run_id="r5", goal="g", plan=plan))
    await asyncio.wait_for(started.wait(), 10)
    reply = await ask(bus, "cancel", CancelRun(run_id="r5", reason="wrong repo"))
    assert isinstance(reply, Accepted)
    await asyncio.wait_for(stopped.wait(), 10)  # the coder was told and stopped
    stop.set()
    await worker

    events = await run_events(bus, "r5")
    [notice] = [e for e in events if isinstance(e, WorkCancelled)]
    assert (notice.task_id, notice.attempt) == ("x", 1)
    assert notice.reason == "wrong repo"
    # it names the submission whose work it withdraws, not every submission of the run id
    assert notice.trace_id == items[0].trace_id != "r5"


async def test_each_role_gets_the_output_of_the_one_before(
    bus: Bus, coordinator: Coordinator
) -> None:
    seen: list[WorkItem] = []
    written = Patch(text="diff --git a/tests/test_x.py b/tests/test_x.py\n")

    async def tester(item: WorkItem) -> Result:
        seen.append(item)
        # the first attempt's tests fail (the task goes back), the second's pass
        return TestResult(passed=item.attempt > 1, output="3 passed", tests=written)

    async def reviewer(item: WorkItem) -> Result:
        seen.append(item)
        return ReviewResult(reviewer="review.style", approved=True)

    spies = {"coder": scripted_coder(), "tester": tester, "review.style": reviewer}
    async with workers_of(bus, spies):
        plan = [TaskSpec(id="x", title="x", reviewers=["review.style"])]
        await ask(bus, "submit", SubmitRun(run_id="chain", goal="g", plan=plan))
        run = await wait_until(bus, "chain", timeout=30)

    assert run.state is RunState.DONE
    failed, test_request, review_request = [i for i in seen if i.run_id == "chain"]
    assert isinstance(test_request, TestRequest)
    assert isinstance(review_request, ReviewRequest)
    assert (failed.attempt, test_request.attempt) == (1, 2)
    assert test_request.patch.text.startswith("diff --git a/notes/x.txt")  # the coder's patch
    assert review_request.patch == test_request.patch
    assert review_request.test_output == "3 passed"
    assert review_request.tests == written  # the tester's tests, merged with the patch
    assert run.tasks["x"].tests == written


async def test_the_runs_test_command_goes_to_its_planner_and_tester(
    bus: Bus, coordinator: Coordinator
) -> None:
    """`SubmitRun.test_command` is kept with the run and sent in its plan and test requests,
    the spaces around it dropped; a run without one sends "" (the tester detects one)."""
    seen: list[WorkItem] = []

    async def planner(item: WorkItem) -> Result:
        seen.append(item)
        return PlanResult(tasks=[TaskSpec(id="x", title="x")])

    async def tester(item: WorkItem) -> Result:
        seen.append(item)
        return TestResult(passed=True, output="ok")

    async def reviewer(item: WorkItem) -> Result:
        return ReviewResult(approved=True)

    spies = {"planner": planner, "coder": scripted_coder(), "tester": tester, "review": reviewer}
    async with workers_of(bus, spies):
        submitted = SubmitRun(run_id="go", goal="g", test_command=" go test ./...\n")
        await ask(bus, "submit", submitted)
        plan = [TaskSpec(id="x", title="x")]
        await ask(bus, "submit", SubmitRun(run_id="detected", goal="g", plan=plan))
        runs = [await wait_until(bus, run_id, timeout=30) for run_id in ("go", "detected")]

    assert [run.state for run in runs] == [RunState.DONE, RunState.DONE]
    assert [run.test_command for run in runs] == ["go test ./...", ""]
    sent = sorted((i.run_id, type(i).__name__, getattr(i, "test_command", None)) for i in seen)
    assert sent == [
        ("detected", "TestRequest", ""),
        ("go", "PlanRequest", "go test ./..."),
        ("go", "TestRequest", "go test ./..."),
    ]
    assert all(isinstance(item, PlanRequest | TestRequest) for item in seen)


async def test_a_run_cancelled_for_a_blank_reason_records_the_default_one(
    bus: Bus, coordinator: Coordinator
) -> None:
    """A blank reason left the run's error empty: `codeyard status` showed a cancelled run
    without a word of why."""
    await ask(
        bus, "submit", SubmitRun(run_id="r-blank", goal="g", plan=[TaskSpec(id="x", title="x")])
    )
    cancelled = await ask(bus, "cancel", CancelRun(run_id="r-blank", reason="  "))
    assert isinstance(cancelled, Accepted), cancelled
    run = await status(bus, "r-blank")
    assert (run.state, run.error) == (RunState.CANCELLED, CancelRun().reason)
