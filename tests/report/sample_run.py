"""A finished run built by hand: four tasks a -> {b, c} -> d, b retried twice (a test failure,
then a review), c's merge denied by the gate once, d's test command approved by a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from codeyard.schemas import (
    ActionCheck,
    Feedback,
    FeedbackKind,
    GateAudit,
    GateDecision,
    Patch,
    RepoRef,
    Run,
    RunEvent,
    RunState,
    RunStateChanged,
    Task,
    TaskChange,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    Usage,
    UsageReported,
)
from codeyard.schemas.messages import ActionKind, Decision

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HOSTILE = "<script>alert('pwned')</script>"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sample_run() -> Run:
    def task(
        spec: TaskSpec,
        attempt: int,
        start: float,
        end: float,
        feedback: list[Feedback] | None = None,
        output: str = "",
    ) -> Task:
        return Task(
            spec=spec,
            state=TaskState.MERGED,
            attempt=attempt,
            feedback=feedback or [],
            started_at=at(start),
            finished_at=at(end),
            test_output=output,
        )

    tasks = {
        "a": task(TaskSpec(id="a", title="models"), 1, 1, 10, output="3 passed"),
        "b": task(
            TaskSpec(id="b", title="api", deps=["a"]),
            3,
            11,
            70,
            [
                Feedback(
                    attempt=1,
                    kind=FeedbackKind.TEST_FAILURE,
                    text="FAILED tests/test_api.py::test_health - assert 404 == 200",
                ),
                Feedback(
                    attempt=2,
                    kind=FeedbackKind.REVIEW,
                    text=f"app.py:3: validate the input {HOSTILE}",
                ),
            ],
            output="x" * 5000 + "\n5 passed at the end",
        ),
        "c": task(
            TaskSpec(id="c", title="cli", deps=["a"]),
            2,
            11,
            40,
            [Feedback(attempt=1, kind=FeedbackKind.SAFETY, text="merge denied: secret in diff")],
        ),
        "d": task(TaskSpec(id="d", title="docs & <readme>", deps=["b", "c"]), 1, 71, 90),
    }
    return Run(
        run_id="r7",
        goal=f"add a health endpoint {HOSTILE}",
        repo=RepoRef(path="/home/me/service", snapshot="/data/runs/r7/integration"),
        state=RunState.DONE,
        tasks=tasks,
        usage=Usage(calls=9, prompt_tokens=12_000, completion_tokens=3_456, cost_usd=0.0421),
        created_at=T0,
        updated_at=at(95),
    )


def moves(seconds: float, *changes: tuple[str, int, TaskState, TaskState | None]) -> RunEvent:
    return TaskStatesChanged(
        run_id="r7",
        sent_at=at(seconds),
        changes=[
            TaskChange(task_id=task_id, attempt=attempt, state=state, previous=previous)
            for task_id, attempt, state, previous in changes
        ],
    )


def gate(
    seconds: float,
    task_id: str,
    action: ActionKind,
    detail: str,
    decision: Decision,
    rule: str,
    reason: str,
    attempt: int = 1,
) -> RunEvent:
    role = "coordinator" if action == "merge" else "tester"
    check = ActionCheck(
        run_id="r7", task_id=task_id, attempt=attempt, action=action, detail=detail, role=role
    )
    answer = GateDecision(decision=decision, rule=rule, reason=reason)
    return GateAudit(
        run_id="r7",
        task_id=task_id,
        attempt=attempt,
        sent_at=at(seconds),
        check=check,
        decision=answer,
    )


def sample_events() -> list[RunEvent]:
    S = TaskState
    repeated = moves(12, ("b", 1, S.CODING, S.READY), ("c", 1, S.CODING, S.READY))
    return [
        RunStateChanged(run_id="r7", sent_at=at(0), state=RunState.PLANNING, reason="submitted"),
        RunStateChanged(
            run_id="r7", sent_at=at(1), state=RunState.EXECUTING, previous=RunState.PLANNING
        ),
        moves(1, ("a", 1, S.CODING, S.READY)),
        moves(5, ("a", 1, S.TESTING, S.CODING)),
        moves(10, ("a", 1, S.MERGED, S.GATED)),
        repeated,
        repeated,  # delivered twice after a failover
        moves(12, ("b", 1, S.CODING, S.READY)),  # reported again in another message
        moves(20, ("b", 1, S.TESTING, S.CODING), ("c", 1, S.GATED, S.REVIEWING)),
        gate(21, "c", "merge", "diff --git a/.env\n+KEY=1", "deny", "secrets", "a secret in diff"),
        moves(22, ("b", 2, S.CODING, S.TESTING), ("c", 2, S.CODING, S.GATED)),
        moves(40, ("c", 2, S.MERGED, S.GATED), ("b", 2, S.REVIEWING, S.TESTING)),
        moves(45, ("b", 3, S.CODING, S.REVIEWING)),
        moves(70, ("b", 3, S.MERGED, S.GATED)),
        gate(72, "d", "run_command", "pytest -q", "needs_approval", "commands.ask", "unknown cmd"),
        gate(80, "d", "run_command", "pytest -q", "allow", "approval.x1", f"approved {HOSTILE}"),
        moves(90, ("d", 1, S.MERGED, S.GATED)),
        UsageReported(run_id="r7", role="coder", usage=Usage(calls=4, prompt_tokens=8000)),
        UsageReported(run_id="r7", role="review", usage=Usage(calls=2, completion_tokens=300)),
        UsageReported(run_id="r7", role="coder", usage=Usage(calls=1, prompt_tokens=100)),
        RunStateChanged(run_id="r7", sent_at=at(94), state=RunState.INTEGRATING),
        RunStateChanged(run_id="r7", sent_at=at(95), state=RunState.DONE, reason="4 tasks"),
        RunStateChanged(run_id="other", sent_at=at(99), state=RunState.FAILED),  # not this run
    ]


# Trojan Source: bidi controls make a line read otherwise than it runs; an escape sequence
# hides text in a terminal; a lone carriage return breaks a line in a browser.
TROJAN = "if ok: \u202e} \u2066# admin\u2069 {\x1b[8m hidden\x1b[0m\rforged"
INVISIBLE = ("\u202e", "\u2066", "\u2069", "\x1b", "\r")


def trojan_run() -> Run:
    spec = TaskSpec(id="a", title=TROJAN, description=TROJAN, acceptance=[TROJAN])
    task = Task(
        spec=spec,
        state=TaskState.FAILED,
        error=TROJAN,
        summary=TROJAN,
        feedback=[Feedback(attempt=1, kind=FeedbackKind.REVIEW, text=TROJAN)],
        patch=Patch(text=f"+++ b/x.py\n+{TROJAN}\n-crlf line\r\n"),
        test_output=TROJAN,
    )
    return Run(run_id="r1", goal=TROJAN, tasks={"a": task})
