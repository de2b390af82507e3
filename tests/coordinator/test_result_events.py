"""Which results a role may answer with: its subject says who sent it, not the message."""

from __future__ import annotations

from typing import TypedDict

import pytest

from codeyard.coordinator.result_events import misattributed
from codeyard.schemas import (
    ApprovalNeeded,
    CodeResult,
    Patch,
    PlanResult,
    Result,
    ReviewResult,
    TestResult,
    Usage,
    WorkFailed,
    WorkRetried,
)


class Ids(TypedDict):
    run_id: str
    task_id: str
    attempt: int


IDS = Ids(run_id="r1", task_id="t1", attempt=1)


def failed(role: str) -> WorkFailed:
    return WorkFailed(role=role, reason="gave up", **IDS)


def retried(role: str) -> WorkRetried:
    return WorkRetried(role=role, delivery=1, usage=Usage(calls=1), **IDS)


def parked(role: str) -> ApprovalNeeded:
    return ApprovalNeeded(role=role, approval_id="a1", action="run_command", detail="x", **IDS)


@pytest.mark.parametrize(
    ("result", "role"),
    [
        (PlanResult(run_id="r1", tasks=[]), "planner"),
        (CodeResult(patch=Patch(text="+"), **IDS), "coder"),
        (TestResult(passed=True, **IDS), "tester"),
        (ReviewResult(reviewer="review", approved=True, **IDS), "review"),
        (ReviewResult(reviewer="review.security", approved=False, **IDS), "review.security"),
        (failed("review.security"), "review.security"),
        (parked("tester"), "tester"),
        (retried("coder"), "coder"),
    ],
)
def test_each_role_answers_with_its_own_results(result: Result, role: str) -> None:
    assert misattributed(result, role) == ""


@pytest.mark.parametrize(
    ("result", "role"),
    [
        (ReviewResult(reviewer="review", approved=True, **IDS), "review.security"),
        (CodeResult(patch=Patch(text="+"), **IDS), "review.security"),
        (TestResult(passed=True, **IDS), "coder"),
        (PlanResult(run_id="r1", tasks=[]), "coder"),
        (failed("coder"), "review.security"),
        (parked("coder"), "tester"),
        (retried("coder"), "review.security"),
    ],
)
def test_a_result_claiming_another_role_is_refused_with_why(result: Result, role: str) -> None:
    assert role in misattributed(result, role)
