"""RunEngine by example: events in, effects out."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from codeyard.coordinator import (
    Cancel,
    CancelWork,
    CapacityChanged,
    Coded,
    Dispatch,
    Effect,
    Event,
    Ignored,
    Integrate,
    Integrated,
    Merge,
    Merged,
    MergeFailed,
    ParkTask,
    PlanApproved,
    PlanProposed,
    PlanRejected,
    RequestApproval,
    ResumeRun,
    ResumeTask,
    Reviewed,
    RunEngine,
    RunFinished,
    RunMoved,
    StartPlanning,
    TaskMoved,
    Tested,
    UnappliedSpend,
    WorkAbandoned,
    event_for,
)
from codeyard.coordinator.engine import FEEDBACK_BYTES, PLAN_QUESTION_CHARS, plan_question
from codeyard.schemas import (
    ApprovalNeeded,
    CodeResult,
    Patch,
    PlanResult,
    ReviewComment,
    ReviewResult,
    TestResult,
    WorkFailed,
    WorkRetried,
)
from codeyard.schemas.codec import MessageError, decode, encode
from codeyard.schemas.model import (
    MAX_COST_USD,
    MAX_USAGE_COUNT,
    Budget,
    Feedback,
    FeedbackKind,
    Run,
    RunState,
    Task,
    TaskSpec,
    TaskState,
    Usage,
)
from tests.coordinator.plans import T0, dispatched, new_run, spec, started

S = TaskState
R = RunState
TOKENS_60 = Usage(calls=1, prompt_tokens=50, completion_tokens=10, cost_usd=0.01)


def through_review(engine: RunEngine, task_id: str, attempt: int = 1) -> None:
    """Drive one task from coding to gated with passing results."""
    engine.handle(Coded(task_id, attempt), T0)
    engine.handle(Tested(task_id, attempt, passed=True), T0)
    for reviewer in engine.required_reviewers(task_id):
        engine.handle(Reviewed(task_id, attempt, reviewer, approved=True), T0)


def finish(engine: RunEngine, task_id: str, attempt: int = 1) -> list[Effect]:
    """Drive one task from coding to merged; the effects of the merge."""
    through_review(engine, task_id, attempt)
    return engine.handle(Merged(task_id, attempt), T0)


# --- the happy path ---------------------------------------------------------------------------


def test_a_task_goes_through_every_phase_and_the_run_completes() -> None:
    engine, effects = started([spec("a")])
    assert effects == [
        RunMoved(R.PLANNING, R.EXECUTING, "plan accepted"),
        TaskMoved("a", 0, S.PLANNED, S.READY, "dependencies merged"),
        TaskMoved("a", 1, S.READY, S.CODING),
        Dispatch("coder", "a", 1),
    ]
    assert engine.handle(Coded("a", 1, TOKENS_60), T0) == [
        TaskMoved("a", 1, S.CODING, S.TESTING),
        Dispatch("tester", "a", 1),
    ]
    assert engine.handle(Tested("a", 1, passed=True), T0) == [
        TaskMoved("a", 1, S.TESTING, S.REVIEWING, "tests passed"),
        Dispatch("review", "a", 1),
    ]
    assert engine.handle(Reviewed("a", 1, "review", approved=True), T0) == [
        TaskMoved("a", 1, S.REVIEWING, S.GATED, "approved by review"),
        Merge("a", 1),
    ]
    assert engine.handle(Merged("a", 1), T0) == [
        TaskMoved("a", 1, S.GATED, S.MERGED),
        RunMoved(R.EXECUTING, R.INTEGRATING, "every task merged"),
        Integrate(),
    ]
    assert engine.handle(Integrated(ok=True, report="branch ready"), T0) == [
        RunMoved(R.INTEGRATING, R.DONE, "branch ready"),
        RunFinished(R.DONE, "branch ready"),
    ]
    assert engine.run.usage == TOKENS_60
    assert engine.run.tasks["a"].started_at == T0
    assert engine.run.tasks["a"].finished_at == T0


def test_planning_first_asks_the_planner() -> None:
    engine = RunEngine(new_run())
    assert engine.handle(StartPlanning(), T0) == [Dispatch("planner", "", 1)]
    assert engine.outstanding_work() == [Dispatch("planner", "", 1)]
    effects = engine.handle(PlanProposed((spec("a"),), TOKENS_60), T0)
    assert dispatched(effects) == [("coder", "a", 1)]
    assert engine.run.usage == TOKENS_60
    assert isinstance(engine.handle(StartPlanning(), T0)[0], Ignored)


def test_the_question_of_a_plan_shows_its_tasks_a_line_each() -> None:
    tasks = {
        "a": Task(spec=TaskSpec(id="a", title="models\nz: forged")),
        "b": Task(spec=TaskSpec(id="b", title="api", deps=["a"])),
        "c": Task(spec=TaskSpec(id="c", title="docs", deps=["a", "b"])),
    }
    assert plan_question(tasks) == (
        "approve the plan of 3 tasks:\n  a: models z: forged\n  b: api (after a)\n"
        "  c: docs (after a, b)"
    )
    many = {f"t{n}": Task(spec=TaskSpec(id=f"t{n}", title="t")) for n in range(45)}
    assert plan_question(many).endswith("\n  t39: t\n  ... and 5 more")
    # ids, titles and deps at their longest: the question stays well within its LongText
    ids = [f"{n:02d}" + "x" * 62 for n in range(45)]
    longest = {
        task_id: Task(spec=TaskSpec(id=task_id, title="t" * 200, deps=ids[:5] if n > 5 else []))
        for n, task_id in enumerate(ids)
    }
    question = plan_question(longest)
    assert len(question) <= PLAN_QUESTION_CHARS
    assert question.endswith(" more")


def test_a_plan_can_wait_for_approval() -> None:
    engine = RunEngine(new_run(approve_plan=True), capacity=2)
    assert engine.handle(PlanProposed((spec("a"), spec("b"))), T0) == [
        RunMoved(R.PLANNING, R.PLAN_APPROVAL, "plan waits for approval"),
        RequestApproval("plan", "approve the plan of 2 tasks:\n  a: task a\n  b: task b", 1),
    ]
    assert dispatched(engine.handle(PlanApproved(), T0)) == [("coder", "a", 1), ("coder", "b", 1)]

    rejected = RunEngine(new_run(approve_plan=True))
    rejected.handle(PlanProposed((spec("a"),)), T0)
    effects = rejected.handle(PlanRejected("too big"), T0)
    assert effects[-1] == RunFinished(R.CANCELLED, "plan rejected: too big")
    assert rejected.run.tasks["a"].state is S.CANCELLED


def test_an_invalid_plan_fails_the_run_and_says_why() -> None:
    engine = RunEngine(new_run())
    effects = engine.handle(PlanProposed((spec("a", "b"), spec("b", "a"))), T0)
    reason = "invalid plan: dependency cycle a -> b -> a (each depends on the next)"
    assert effects == [RunMoved(R.PLANNING, R.FAILED, reason), RunFinished(R.FAILED, reason)]
    assert engine.run.error == reason


def test_a_planner_giving_up_fails_the_run() -> None:
    engine = RunEngine(new_run())
    engine.handle(StartPlanning(), T0)
    effects = engine.handle(WorkAbandoned("", 1, "planner", "no answer", TOKENS_60), T0)
    assert effects[-1] == RunFinished(R.FAILED, "planner failed: no answer")
    assert engine.run.usage == TOKENS_60


# --- order and capacity -----------------------------------------------------------------------


def test_a_task_starts_only_once_its_dependencies_are_merged() -> None:
    engine, effects = started([spec("api", "models"), spec("models")])
    assert dispatched(effects) == [("coder", "models", 1)]
    through_review(engine, "models")
    assert engine.run.tasks["api"].state is S.PLANNED
    effects = engine.handle(Merged("models", 1), T0)
    assert effects == [
        TaskMoved("models", 1, S.GATED, S.MERGED),
        TaskMoved("api", 0, S.PLANNED, S.READY, "dependencies merged"),
        TaskMoved("api", 1, S.READY, S.CODING),
        Dispatch("coder", "api", 1),
    ]


def test_longest_remaining_chain_starts_first_within_capacity() -> None:
    # chain: c -> b -> a (c last), plus independent x and y; one coder
    plan = [spec("x"), spec("c", "b"), spec("y"), spec("b", "a"), spec("a")]
    engine, effects = started(plan, capacity=1)
    assert dispatched(effects) == [("coder", "a", 1)]  # critical path 3 beats x, y (1)
    assert engine.in_flight == {"a"}

    effects = engine.handle(CapacityChanged(3), T0)
    assert dispatched(effects) == [("coder", "x", 1), ("coder", "y", 1)]  # ties: plan order
    assert engine.in_flight == {"a", "x", "y"}

    finish(engine, "x")
    assert engine.in_flight == {"a", "y"}
    effects = finish(engine, "a")
    assert dispatched(effects) == [("coder", "b", 1)]


def test_capacity_counts_tasks_in_every_phase_not_just_coding() -> None:
    engine, _ = started([spec("a"), spec("b")], capacity=1)
    through_review(engine, "a")  # a is gated, still in flight
    assert engine.run.tasks["b"].state is S.READY
    assert dispatched(engine.handle(Merged("a", 1), T0)) == [("coder", "b", 1)]


# --- feedback edges and attempts --------------------------------------------------------------


def test_a_failed_test_sends_the_task_back_to_the_coder_with_the_output() -> None:
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1), T0)
    assert engine.handle(Tested("a", 1, passed=False, report="1 failed: test_login"), T0) == [
        TaskMoved("a", 2, S.TESTING, S.CODING, "test_failure on attempt 1"),
        Dispatch(
            "coder",
            "a",
            2,
            (Feedback(attempt=1, kind=FeedbackKind.TEST_FAILURE, text="1 failed: test_login"),),
        ),
    ]


def test_every_required_reviewer_must_approve_and_one_rejection_sends_it_back() -> None:
    engine, _ = started([spec("a", reviewers=["review", "review.security"])])
    engine.handle(Coded("a", 1), T0)
    assert dispatched(engine.handle(Tested("a", 1, passed=True), T0)) == [
        ("review", "a", 1),
        ("review.security", "a", 1),
    ]
    assert engine.handle(Reviewed("a", 1, "review", approved=True), T0) == []
    assert engine.run.tasks["a"].state is S.REVIEWING
    effects = engine.handle(Reviewed("a", 1, "review.security", False, "SQL injection"), T0)
    assert effects[-1] == Dispatch(
        "coder",
        "a",
        2,
        (Feedback(attempt=1, kind=FeedbackKind.REVIEW, text="review.security: SQL injection"),),
    )
    assert engine.run.tasks["a"].approvals == {}

    # attempt 2: both approve, in any order
    engine.handle(Coded("a", 2), T0)
    engine.handle(Tested("a", 2, passed=True), T0)
    assert engine.handle(Reviewed("a", 2, "review.security", approved=True), T0) == []
    assert engine.handle(Reviewed("a", 2, "review", approved=True), T0)[-1] == Merge("a", 2)


def test_the_run_default_reviewers_apply_when_a_task_names_none() -> None:
    run = new_run()
    run.reviewers = ["review.style"]
    engine = RunEngine(run)
    engine.handle(PlanProposed((spec("a"),)), T0)
    engine.handle(Coded("a", 1), T0)
    assert dispatched(engine.handle(Tested("a", 1, True), T0)) == [("review.style", "a", 1)]


def test_a_merge_conflict_or_regression_goes_back_to_coding() -> None:
    engine, _ = started([spec("a")])
    through_review(engine, "a")
    effects = engine.handle(MergeFailed("a", 1, FeedbackKind.CONFLICT, "conflict in app.py"), T0)
    assert effects[0] == TaskMoved("a", 2, S.GATED, S.CODING, "conflict on attempt 1")
    through_review(engine, "a", attempt=2)
    effects = engine.handle(MergeFailed("a", 2, FeedbackKind.REGRESSION, "test_x broke"), T0)
    kinds = [f.kind for f in engine.run.tasks["a"].feedback]
    assert kinds == [FeedbackKind.CONFLICT, FeedbackKind.REGRESSION]
    assert dispatched(effects) == [("coder", "a", 3)]


def test_exhausted_attempts_fail_the_task_and_the_run_and_dependents_never_start() -> None:
    plan = [spec("a"), spec("b", "a"), spec("side")]
    engine, _ = started(plan, budget=Budget(max_attempts_per_task=2))
    engine.handle(Coded("a", 1), T0)
    engine.handle(Tested("a", 1, passed=False, report="boom"), T0)
    engine.handle(Coded("a", 2), T0)
    effects = engine.handle(Tested("a", 2, passed=False, report="boom again"), T0)

    reason = "attempts exhausted: attempt 2 of 2 ended in test_failure"
    run_reason = f"task 'a' failed: {reason}"
    assert effects == [
        TaskMoved("a", 2, S.TESTING, S.FAILED, reason),
        TaskMoved("b", 0, S.PLANNED, S.CANCELLED, run_reason),
        CancelWork("side", 1),
        TaskMoved("side", 1, S.CODING, S.CANCELLED, run_reason),
        RunMoved(R.EXECUTING, R.FAILED, run_reason),
        RunFinished(R.FAILED, run_reason),
    ]
    assert engine.run.tasks["a"].error == reason
    assert engine.in_flight == frozenset()
    # nothing more happens: the late result of `side` is ignored
    assert isinstance(engine.handle(Coded("side", 1), T0)[0], Ignored)


def test_work_given_up_by_a_worker_fails_the_task() -> None:
    engine, _ = started([spec("a")])
    assert isinstance(engine.handle(WorkAbandoned("a", 1, "review", "x"), T0)[0], Ignored)
    effects = engine.handle(WorkAbandoned("a", 1, "coder", "poison message", TOKENS_60), T0)
    assert effects[0] == TaskMoved("a", 1, S.CODING, S.FAILED, "coder failed: poison message")
    assert engine.run.state is R.FAILED
    assert engine.run.usage == TOKENS_60  # the tokens of the work given up are counted


def test_what_parked_work_spent_is_counted_once_when_it_parks() -> None:
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1), T0)
    park = ParkTask("a", 1, "make deploy needs approval", TOKENS_60)
    assert engine.handle(park, T0) == [
        TaskMoved("a", 1, S.TESTING, S.AWAITING_APPROVAL, "make deploy needs approval")
    ]
    assert engine.run.usage == TOKENS_60
    assert isinstance(engine.handle(park, T0)[0], Ignored)  # replayed: already parked
    assert engine.run.usage == TOKENS_60


# --- work retried after spending --------------------------------------------------------------


def test_what_a_retried_delivery_spent_is_counted_whatever_the_task_does_now() -> None:
    # No state to check it against: a retry's report may come after the work it was part of
    # was answered (the next delivery's result), or after its attempt failed. Its tokens are
    # spent all the same.
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1, TOKENS_60), T0)
    engine.handle(Tested("a", 1, passed=False), T0)  # now coding attempt 2
    assert engine.handle(UnappliedSpend("a", 1, "coder", TOKENS_60, "report-1"), T0) == []
    assert engine.run.usage == TOKENS_60 + TOKENS_60
    assert engine.take_changed_tasks() == {"a"}  # its record remembers the report


def test_a_replayed_retry_report_is_not_counted_twice_even_after_a_reload() -> None:
    engine, _ = started([spec("a")])
    planning = UnappliedSpend("", 1, "planner", TOKENS_60, "report-plan")
    coding = UnappliedSpend("a", 1, "coder", TOKENS_60, "report-code")
    engine.handle(planning, T0)
    engine.handle(coding, T0)
    # a new leader loads the stored run; the reports, stored but not acked, come again
    reloaded = RunEngine(decode(encode(engine.run), Run))
    for event in (planning, coding):
        [ignored] = reloaded.handle(event, T0)
        assert ignored == Ignored(event, f"the usage of {event.report} is counted already")
    assert reloaded.run.usage == TOKENS_60 + TOKENS_60


def test_only_the_latest_retry_reports_of_a_task_are_remembered() -> None:
    engine, _ = started([spec("a")])
    for number in range(100):
        engine.handle(UnappliedSpend("a", 1, "coder", TOKENS_60, f"report-{number}"), T0)
    remembered = engine.run.tasks["a"].charged_reports
    assert remembered == [f"report-{number}" for number in range(68, 100)]


def test_an_answer_counted_when_applied_is_not_counted_again_when_it_comes_back_late() -> None:
    """A result applied and stored, then redelivered (a failover before its ack), is late for
    its task by then: the coordinator reports its usage as unapplied, which must not count it
    a second time."""
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1, TOKENS_60, result_id="code-1"), T0)
    assert engine.run.tasks["a"].charged_reports == ["code-1"]
    reloaded = RunEngine(decode(encode(engine.run), Run))
    again = UnappliedSpend("a", 1, "coder", TOKENS_60, "code-1")
    assert reloaded.handle(again, T0) == [Ignored(again, "the usage of code-1 is counted already")]
    assert reloaded.run.usage == TOKENS_60


def test_answers_that_spent_nothing_are_not_remembered() -> None:
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1, result_id="code-1"), T0)
    engine.handle(Tested("a", 1, passed=True, result_id="test-1"), T0)
    assert engine.run.tasks["a"].charged_reports == []


def test_a_retry_report_counts_toward_the_budget() -> None:
    engine, _ = started([spec("a")], budget=Budget(max_tokens=100))
    effects = engine.handle(UnappliedSpend("a", 1, "coder", TOKENS_60 + TOKENS_60, "r1"), T0)
    assert RequestApproval("budget", "120 tokens used, budget 100", 1) in effects


def test_a_retry_report_for_a_finished_run_or_an_unknown_task_is_ignored() -> None:
    engine, _ = started([spec("a")])
    ghost = UnappliedSpend("ghost", 1, "coder", TOKENS_60, "r1")
    assert engine.handle(ghost, T0) == [Ignored(ghost, "unknown task 'ghost'")]
    engine.handle(Cancel(), T0)
    late = UnappliedSpend("a", 1, "coder", TOKENS_60, "r2")
    assert engine.handle(late, T0) == [Ignored(late, "run is cancelled")]
    assert engine.run.usage == Usage()


# --- idempotence ------------------------------------------------------------------------------


def test_duplicate_stale_and_misdirected_results_are_ignored_and_say_why() -> None:
    engine, _ = started([spec("a")])
    first = Coded("a", 1, TOKENS_60)
    engine.handle(first, T0)
    engine.handle(Tested("a", 1, passed=False), T0)  # now coding attempt 2
    before = msgspec.json.encode(engine.run)

    later = T0 + timedelta(hours=1)
    cases: list[tuple[Event, str]] = [
        (first, "stale: attempt 1, task is at 2"),
        (Tested("a", 1, passed=True), "stale: attempt 1, task is at 2"),
        (Merged("a", 2), "task is coding, not gated"),
        (Coded("ghost", 1), "unknown task 'ghost'"),
        (ResumeTask("a", 2, approved=True), "task is coding, not awaiting_approval"),
        (PlanProposed((spec("z"),)), "run is executing and has a plan already"),
        (Integrated(ok=True), "run is executing, not integrating"),
    ]
    for event, reason in cases:
        assert engine.handle(event, later) == [Ignored(event, reason)]
    assert msgspec.json.encode(engine.run) == before  # not even updated_at moved
    assert engine.run.usage == TOKENS_60  # counted once

    engine.handle(Coded("a", 2), T0)
    engine.handle(Tested("a", 2, passed=True), T0)
    review = Reviewed("a", 2, "review.other", approved=True)
    assert engine.handle(review, T0) == [
        Ignored(review, "'review.other' is not a required reviewer of this task")
    ]


def test_answers_to_work_the_run_has_not_sent_yet_are_early_and_apply_once_it_has() -> None:
    """A reloaded run is behind when the step that sent work was lost: the answers to that work
    are early (to be given again later), not dropped, unlike stale or misdirected ones."""
    planning = RunEngine(new_run(), capacity=4)  # the step that took the plan was lost
    assert planning.handle(Coded("a", 1), T0) == [
        Ignored(Coded("a", 1), "run is planning", early=True)
    ]
    engine, _ = started([spec("a", reviewers=["review", "review.security"])])
    before = msgspec.json.encode(engine.run)  # coding attempt 1
    cases: list[tuple[Event, str]] = [
        (Tested("a", 1, passed=True), "task is coding, not testing"),
        (Reviewed("a", 1, "review.security", approved=True), "task is coding, not reviewing"),
        (Coded("a", 2), "early: attempt 2, task is at 1"),
        (WorkAbandoned("a", 1, "tester", "x"), "no tester work is out for task (it is coding)"),
        (ParkTask("a", 1, "needs a package", role="tester"), "task is coding: tester has no work"),
    ]
    for event, reason in cases:
        assert engine.handle(event, T0) == [Ignored(event, reason, early=True)]
    assert msgspec.json.encode(engine.run) == before

    engine.handle(Coded("a", 1), T0)
    assert engine.handle(Tested("a", 1, passed=True), T0)[0] == TaskMoved(
        "a", 1, S.TESTING, S.REVIEWING, "tests passed"
    )
    # a coder's answer is never early once the task is past coding at its attempt
    assert engine.handle(Coded("a", 1), T0) == [
        Ignored(Coded("a", 1), "task is reviewing, not coding")
    ]
    engine.handle(Reviewed("a", 1, "review", approved=False), T0)  # back to coding, attempt 2
    engine.handle(ParkTask("a", 2, "asks"), T0)
    # nothing is early for a parked or finished task: its work is taken back
    assert engine.handle(Tested("a", 2, passed=True), T0) == [
        Ignored(Tested("a", 2, passed=True), "task is awaiting_approval, not testing")
    ]
    assert engine.handle(Coded("a", 3), T0) == [
        Ignored(Coded("a", 3), "stale: attempt 3, task is at 2")
    ]


def test_a_second_approval_from_the_same_reviewer_counts_once() -> None:
    engine, _ = started([spec("a", reviewers=["review", "review.security"])])
    engine.handle(Coded("a", 1), T0)
    engine.handle(Tested("a", 1, passed=True), T0)
    approve = Reviewed("a", 1, "review", approved=True)
    engine.handle(approve, T0)
    assert engine.handle(approve, T0) == [Ignored(approve, "'review' already reviewed attempt 1")]
    assert engine.run.tasks["a"].state is S.REVIEWING


# --- cancellation -----------------------------------------------------------------------------


def test_cancelling_stops_dispatch_and_names_the_work_to_cancel() -> None:
    engine, _ = started([spec("a"), spec("b"), spec("c", "a"), spec("d")], capacity=2)
    engine.handle(Coded("a", 1), T0)
    effects = engine.handle(Cancel("user changed their mind"), T0)
    assert [e for e in effects if isinstance(e, CancelWork)] == [
        CancelWork("a", 1),
        CancelWork("b", 1),
    ]
    assert effects[-1] == RunFinished(R.CANCELLED, "user changed their mind")
    assert {t.state for t in engine.run.tasks.values()} == {S.CANCELLED}
    assert engine.run.error == "user changed their mind"
    assert engine.outstanding_work() == []

    for event in (Tested("a", 1, passed=True), Coded("b", 1), CapacityChanged(10), Cancel()):
        assert dispatched(engine.handle(event, T0)) == []
    assert engine.handle(Cancel(), T0) == [Ignored(Cancel(), "run is already cancelled")]


def test_cancelling_during_planning_cancels_the_planner() -> None:
    engine = RunEngine(new_run())
    engine.handle(StartPlanning(), T0)
    assert engine.handle(Cancel(), T0) == [
        CancelWork("", 1),
        RunMoved(R.PLANNING, R.CANCELLED, "cancelled by user"),
        RunFinished(R.CANCELLED, "cancelled by user"),
    ]


# --- budget -----------------------------------------------------------------------------------


def test_over_budget_the_run_pauses_until_resumed_with_a_larger_budget() -> None:
    engine, _ = started(
        [spec("a"), spec("b"), spec("c")], capacity=2, budget=Budget(max_tokens=100)
    )
    assert engine.handle(Coded("a", 1, TOKENS_60), T0) == [
        TaskMoved("a", 1, S.CODING, S.TESTING),
        Dispatch("tester", "a", 1),
    ]
    # 120 tokens > 100: pause; the result still applies, its next work is held
    assert engine.handle(Coded("b", 1, TOKENS_60), T0) == [
        RunMoved(R.EXECUTING, R.AWAITING_APPROVAL, "over budget: 120 tokens used, budget 100"),
        RequestApproval("budget", "120 tokens used, budget 100", 1),
        TaskMoved("b", 1, S.CODING, S.TESTING),
    ]
    assert engine.run.tasks["b"].held
    # in-flight work still lands; nothing new goes out, no task starts
    assert dispatched(engine.handle(Tested("a", 1, passed=True), T0)) == []
    assert engine.run.tasks["c"].state is S.READY

    # approval without more budget is not enough
    assert engine.handle(ResumeRun(), T0) == [
        RequestApproval("budget", "still over budget: 120 tokens used, budget 100", 2)
    ]
    effects = engine.handle(ResumeRun(Budget(max_tokens=1_000)), T0)
    assert effects[0] == RunMoved(R.AWAITING_APPROVAL, R.EXECUTING, "resumed")
    assert dispatched(effects) == [("review", "a", 1), ("tester", "b", 1)]
    assert not any(t.held for t in engine.run.tasks.values())
    assert isinstance(engine.handle(ResumeRun(), T0)[0], Ignored)


def test_cost_limit_pauses_too_and_the_last_merge_waits_for_resume() -> None:
    engine, _ = started([spec("a")], budget=Budget(max_cost_usd=0.005))
    engine.handle(Coded("a", 1), T0)
    engine.handle(Tested("a", 1, passed=True), T0)
    effects = engine.handle(Reviewed("a", 1, "review", True, usage=TOKENS_60), T0)
    assert RequestApproval("budget", "$0.0100 spent, budget $0.0050", 1) in effects
    assert not any(isinstance(e, Merge) for e in effects)
    effects = engine.handle(ResumeRun(Budget(max_cost_usd=1.0)), T0)
    assert effects[-1] == Merge("a", 1)
    assert engine.handle(Merged("a", 1), T0)[-1] == Integrate()


# --- approvals for a task ---------------------------------------------------------------------


def test_a_parked_task_resumes_where_it_was_and_redoes_that_work() -> None:
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1), T0)
    assert engine.handle(ParkTask("a", 1, "wants to install a package"), T0) == [
        TaskMoved("a", 1, S.TESTING, S.AWAITING_APPROVAL, "wants to install a package"),
    ]
    # results for the parked work do not apply
    assert isinstance(engine.handle(Tested("a", 1, passed=True), T0)[0], Ignored)
    assert engine.handle(ResumeTask("a", 1, approved=True), T0) == [
        TaskMoved("a", 1, S.AWAITING_APPROVAL, S.TESTING, "approved"),
        Dispatch("tester", "a", 1),
    ]
    assert engine.handle(Tested("a", 1, passed=True), T0)[0] == TaskMoved(
        "a", 1, S.TESTING, S.REVIEWING, "tests passed"
    )


def test_a_copy_of_the_answer_that_parked_a_task_does_not_park_it_again_once_approved() -> None:
    """The worker's `ApprovalNeeded` comes again when its ack was lost (or its batch is sent
    again): parked anew after the approval, the task would wait for an answer already given,
    while the approved work it sent again is ignored."""
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1), T0)
    park = ParkTask("a", 1, "make deploy needs approval", result_id="needed-1", role="tester")
    engine.handle(park, T0)
    engine.handle(ResumeTask("a", 1, approved=True), T0)

    assert isinstance(engine.handle(park, T0)[0], Ignored)

    assert engine.run.tasks["a"].state is S.TESTING
    assert engine.handle(Tested("a", 1, passed=True), T0)[0] == TaskMoved(
        "a", 1, S.TESTING, S.REVIEWING, "tests passed"
    )


def test_a_parked_ready_task_does_not_start_until_approved() -> None:
    engine, _ = started([spec("a"), spec("b")], capacity=1)
    engine.handle(ParkTask("b", 0, "policy"), T0)
    assert dispatched(finish(engine, "a")) == []
    effects = engine.handle(ResumeTask("b", 0, approved=True), T0)
    assert dispatched(effects) == [("coder", "b", 1)]


def test_a_denied_approval_fails_the_task_and_the_run() -> None:
    engine, _ = started([spec("a")])
    through_review(engine, "a")
    engine.handle(ParkTask("a", 1, "merge needs approval"), T0)
    effects = engine.handle(ResumeTask("a", 1, approved=False, reason="not today"), T0)
    assert effects[0] == TaskMoved(
        "a", 1, S.AWAITING_APPROVAL, S.FAILED, "approval denied: not today"
    )
    assert engine.run.state is R.FAILED


# --- integration ------------------------------------------------------------------------------


def test_a_failed_integration_fails_the_run() -> None:
    engine, _ = started([spec("a")])
    finish(engine, "a")
    effects = engine.handle(Integrated(ok=False, report="suite red"), T0)
    assert effects[-1] == RunFinished(R.FAILED, "integration failed: suite red")


# --- recovery ---------------------------------------------------------------------------------


def test_a_standby_rebuilds_the_engine_from_the_stored_run_and_finishes() -> None:
    engine, _ = started([spec("a"), spec("b", "a"), spec("c")], capacity=2)
    finish(engine, "a")  # b starts
    engine.handle(Coded("b", 1), T0)
    engine.handle(Coded("c", 1), T0)
    engine.handle(Tested("c", 1, passed=False), T0)  # c back to coding, attempt 2
    stored = msgspec.json.encode(engine.run)

    standby = RunEngine(msgspec.json.decode(stored, type=Run), capacity=2)
    assert msgspec.json.encode(standby.run) == stored
    assert standby.in_flight == {"b", "c"}
    assert [(type(e).__name__, getattr(e, "task_id", "")) for e in standby.outstanding_work()] == [
        ("Dispatch", "b"),
        ("Dispatch", "c"),
    ]
    # what the old leader already applied stays applied
    assert isinstance(standby.handle(Merged("a", 1), T0)[0], Ignored)
    assert isinstance(standby.handle(Coded("c", 1), T0)[0], Ignored)
    through_review(standby, "b")
    standby.handle(Merged("b", 1), T0)
    finish(standby, "c", attempt=2)
    assert standby.run.state is R.INTEGRATING
    assert standby.outstanding_work() == [Integrate()]


def test_the_engine_says_which_tasks_changed_so_a_store_writes_only_those() -> None:
    engine, _ = started([spec("a"), spec("b", "a"), spec("c")], capacity=1)
    assert engine.take_changed_tasks() == {"a", "b", "c"}
    engine.handle(Coded("a", 1), T0)
    assert engine.take_changed_tasks() == {"a"}
    engine.handle(Coded("a", 1), T0)  # a duplicate: ignored
    assert engine.take_changed_tasks() == set()
    engine.handle(Tested("a", 1, passed=True), T0)
    engine.handle(Reviewed("a", 1, "review", approved=True), T0)
    engine.handle(Merged("a", 1), T0)  # b becomes ready and starts; c still waits
    assert engine.take_changed_tasks() == {"a", "b"}


# --- wire results -----------------------------------------------------------------------------


def test_wire_results_become_engine_events() -> None:
    """Each carries the result's id, by which its usage is counted once."""
    coded = CodeResult(task_id="a", attempt=2, patch=Patch(text="diff"), usage=TOKENS_60)
    assert event_for(coded) == Coded("a", 2, TOKENS_60, coded.msg_id)
    tested = TestResult(task_id="a", attempt=1, passed=False, output="E")
    assert event_for(tested) == Tested("a", 1, False, "E", result_id=tested.msg_id)
    review = ReviewResult(
        task_id="a",
        attempt=1,
        reviewer="review.security",
        approved=False,
        comments=[
            ReviewComment(text="escape this", path="app.py", line=3),
            ReviewComment(text="whole file", path="db.py"),
            ReviewComment(text="in general"),
        ],
    )
    assert event_for(review) == Reviewed(
        "a",
        1,
        "review.security",
        False,
        "app.py:3: escape this\ndb.py: whole file\nin general",
        result_id=review.msg_id,
    )
    failed = WorkFailed(task_id="a", attempt=1, role="coder", reason="r", usage=TOKENS_60)
    assert event_for(failed) == WorkAbandoned("a", 1, "coder", "r", TOKENS_60, failed.msg_id)
    plan = PlanResult(tasks=[spec("a")])
    assert event_for(plan) == PlanProposed((spec("a"),), result_id=plan.msg_id)
    waiting = ApprovalNeeded(
        task_id="a",
        attempt=1,
        role="tester",
        approval_id="a1b2c3d4e5f60718",
        action="run_command",
        detail="make deploy",
        reason="ask",
        usage=TOKENS_60,
    )
    assert event_for(waiting) == ParkTask(
        "a",
        1,
        "tester: run_command needs approval a1b2c3d4e5f60718: ask",
        TOKENS_60,
        waiting.msg_id,
        "tester",
    )
    retried = WorkRetried(task_id="a", attempt=1, role="coder", delivery=2, usage=TOKENS_60)
    assert event_for(retried) == UnappliedSpend("a", 1, "coder", TOKENS_60, retried.msg_id)


def test_long_feedback_is_cut_to_what_the_wire_allows_keeping_the_end() -> None:
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1), T0)
    log = "start\n" + "x" * 50_000 + "\nFAILED test_end"
    engine.handle(Tested("a", 1, passed=False, report=log), T0)
    text = engine.run.tasks["a"].feedback[0].text
    assert len(text) <= 20_000
    assert text.startswith("start\n")
    assert text.endswith("FAILED test_end")
    assert "characters cut" in text


def test_a_tasks_feedback_keeps_its_latest_entries_within_a_message() -> None:
    """Logs of control characters (6 bytes each on the wire, as colour codes are), sent back
    attempt after attempt: the feedback a code request carries keeps to FEEDBACK_BYTES."""
    engine, _ = started([spec("a")], budget=Budget(max_attempts_per_task=30))
    coloured = "\x1b" * 20_000
    for attempt in range(1, 30):
        engine.handle(Coded("a", attempt), T0)
        effects = engine.handle(Tested("a", attempt, passed=False, report=coloured), T0)
    [dispatch] = [effect for effect in effects if isinstance(effect, Dispatch)]
    assert len(encode(Feedback(attempt=1, kind=FeedbackKind.REVIEW, text=coloured))) > 100_000
    assert 0 < len(msgspec.json.encode(dispatch.feedback)) <= FEEDBACK_BYTES
    assert [entry.attempt for entry in dispatch.feedback] == [28, 29]
    assert list(dispatch.feedback) == engine.run.tasks["a"].feedback


def test_usage_sums_stop_at_their_bounds_so_the_run_record_stays_readable() -> None:
    """Two answers each claiming the most a result may (1e12 USD): the run's sum saturates
    instead of growing past what its record may hold, so the record still decodes."""
    most = Usage(calls=1, prompt_tokens=MAX_USAGE_COUNT, cost_usd=MAX_COST_USD)
    engine, _ = started([spec("a")])
    engine.handle(Coded("a", 1, usage=most), T0)
    engine.handle(Tested("a", 1, passed=True, usage=most), T0)
    assert engine.run.usage == Usage(calls=2, prompt_tokens=MAX_USAGE_COUNT, cost_usd=1e12)
    assert decode(encode(engine.run), Run) == engine.run
    with pytest.raises(MessageError, match="cost_usd"):
        decode(encode(Usage(cost_usd=2 * MAX_COST_USD)), Usage)
