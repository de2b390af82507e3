"""Wire results (`cy.result.*`) as engine events."""

from __future__ import annotations

from codeyard.coordinator.events import (
    Coded,
    Event,
    ParkTask,
    PlanProposed,
    Reviewed,
    Tested,
    UnappliedSpend,
    WorkAbandoned,
)
from codeyard.schemas.messages import (
    ApprovalNeeded,
    CodeResult,
    PlanResult,
    Result,
    ReviewComment,
    ReviewResult,
    TestResult,
    WorkFailed,
    WorkRetried,
)


def event_for(result: Result) -> Event:
    """The engine event a worker's result stands for."""
    match result:
        case PlanResult():
            return PlanProposed(tuple(result.tasks), result.usage, result.msg_id)
        case CodeResult():
            return Coded(result.task_id, result.attempt, result.usage, result.msg_id)
        case TestResult():
            return Tested(
                result.task_id,
                result.attempt,
                result.passed,
                result.output,
                result.usage,
                result.msg_id,
            )
        case ReviewResult():
            return Reviewed(
                result.task_id,
                result.attempt,
                result.reviewer,
                result.approved,
                "\n".join(_comment_line(comment) for comment in result.comments),
                result.usage,
                result.msg_id,
            )
        case WorkFailed():
            return WorkAbandoned(
                result.task_id,
                result.attempt,
                result.role,
                result.reason,
                result.usage,
                result.msg_id,
            )
        case ApprovalNeeded():
            return ParkTask(
                result.task_id,
                result.attempt,
                _waiting_for(result),
                result.usage,
                result.msg_id,
                result.role,
            )
        case WorkRetried():
            return unapplied_spend(result)


def unapplied_spend(result: Result) -> UnappliedSpend:
    """What `result` spent, to count though the result itself is not applied."""
    return UnappliedSpend(
        result.task_id, result.attempt, role_of(result), result.usage, result.msg_id
    )


def role_of(result: Result) -> str:
    """The role whose work `result` answers (a plugin reviewer's `review.<name>`)."""
    match result:
        case PlanResult():
            return "planner"
        case CodeResult():
            return "coder"
        case TestResult():
            return "tester"
        case ReviewResult():
            return result.reviewer
        case WorkFailed() | ApprovalNeeded() | WorkRetried():
            return result.role


def misattributed(result: Result, role: str) -> str:
    """Why `result`, published on `role`'s result subject, may not be taken as that role's
    answer, or "". NATS grants decide who may publish on a subject, not what the message
    claims: without this a review plugin could approve as another reviewer, send a patch or
    fail a task of another stage."""
    claimed = role_of(result)
    if claimed != role:
        return f"a {type(result).__name__} of {claimed!r} came from {role!r}"
    return ""


def _comment_line(comment: ReviewComment) -> str:
    if comment.path and comment.line:
        return f"{comment.path}:{comment.line}: {comment.text}"
    if comment.path:
        return f"{comment.path}: {comment.text}"
    return comment.text


def _waiting_for(result: ApprovalNeeded) -> str:
    return f"{result.role}: {result.action} needs approval {result.approval_id}: {result.reason}"
