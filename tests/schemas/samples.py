"""One realistic instance of every concrete wire message, for round trips (pure and over NATS).

Values are fixed (ids, timestamps), so the samples compare equal across calls and processes.
Every optional field that can hold something does, so a round trip exercises it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict

from codeyard.schemas import messages as m
from codeyard.schemas.envelope import Envelope
from codeyard.schemas.model import (
    Budget,
    Feedback,
    FeedbackKind,
    Patch,
    RepoRef,
    Run,
    RunState,
    Task,
    TaskSpec,
    TaskState,
    Usage,
)

RUN_ID = "run-7f3c2a9e"
TASK_ID = "t2-jwt-middleware"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SENT_AT = datetime(2025, 3, 14, 9, 26, 53, 589_000, tzinfo=UTC)
APPROVAL_ID = "ap-4c1d"

REPO = RepoRef(path="/srv/repos/shop-api", snapshot="sha256-9d5ed678fe57bcca", head="3b18e51")
USAGE = Usage(calls=2, prompt_tokens=3_412, completion_tokens=918, cost_usd=0.0271)
MODEL = "gpt-4o-mini-2024-07-18"  # as an endpoint names the model that answered
DIFF = """\
--- a/app/auth.py
+++ b/app/auth.py
@@ -1,3 +1,9 @@
+import jwt
+
+def verify(token: str, key: str) -> dict[str, object]:
+    return jwt.decode(token, key, algorithms=["HS256"])
"""
PATCH = Patch(text=DIFF, sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
TASK_SPEC = TaskSpec(
    id=TASK_ID,
    title="JWT verification middleware",
    description="Reject requests without a valid bearer token on /api/* routes.",
    acceptance=["401 without a token", "401 with an expired token", "200 with a valid one"],
    files=["app/auth.py", "app/main.py", "tests/test_auth.py"],
    deps=["t1-settings"],
    reviewers=["review", "review.security"],
    effort=2.5,
)
FEEDBACK = Feedback(
    attempt=1, kind=FeedbackKind.TEST_FAILURE, text="test_expired_token: expected 401, got 500"
)


class EnvelopeFields(TypedDict):
    run_id: str
    task_id: str
    attempt: int
    msg_id: str
    trace_id: str
    sent_at: datetime


def _envelope(attempt: int = 0, *, task: bool = True, n: int = 0) -> EnvelopeFields:
    """Fixed envelope fields; `n` makes each sample's msg_id unique."""
    return {
        "run_id": RUN_ID,
        "task_id": TASK_ID if task else "",
        "attempt": attempt,
        "msg_id": f"msg-{n:04d}",
        "trace_id": TRACE_ID,
        "sent_at": SENT_AT,
    }


def sample_run() -> Run:
    spec_one = TaskSpec(id="t1-settings", title="JWT settings", files=["app/settings.py"])
    return Run(
        run_id=RUN_ID,
        goal="Add JWT auth to this FastAPI service",
        repo=REPO,
        state=RunState.EXECUTING,
        tasks={
            "t1-settings": Task(
                spec=spec_one,
                state=TaskState.MERGED,
                attempt=0,
                started_at=SENT_AT,
                finished_at=datetime(2025, 3, 14, 9, 31, 2, tzinfo=UTC),
            ),
            TASK_ID: Task(
                spec=TASK_SPEC,
                state=TaskState.CODING,
                attempt=1,
                feedback=[FEEDBACK],
                approvals={"install_package": True},
                started_at=SENT_AT,
            ),
        },
        budget=Budget(max_tokens=500_000, max_cost_usd=5.0, max_attempts_per_task=4),
        usage=USAGE,
        test_command="make test",
        created_at=SENT_AT,
        updated_at=datetime(2025, 3, 14, 9, 40, 0, tzinfo=UTC),
    )


def sample_messages() -> list[Envelope]:
    """One instance of every concrete message class, in `message_classes()` order."""
    check = m.ActionCheck(
        **_envelope(1, n=10),
        action="install_package",
        detail="pip install pyjwt==2.9.0",
        role="coder",
    )
    decision = m.GateDecision(
        **_envelope(1, n=11),
        decision="needs_approval",
        reason="new dependency",
        rule="deps.require_approval",
        approval_id=APPROVAL_ID,
    )
    return [
        m.PlanRequest(
            **_envelope(task=False, n=1),
            goal="Add JWT auth to this FastAPI service",
            repo=REPO,
            constraints=["keep the public API unchanged", "no new services"],
            feedback=[Feedback(attempt=0, kind=FeedbackKind.REVIEW, text="split task 2")],
            test_command="make test",
        ),
        m.CodeRequest(
            **_envelope(1, n=2),
            goal="Add JWT auth to this FastAPI service",
            task=TASK_SPEC,
            repo=REPO,
            feedback=[FEEDBACK],
        ),
        m.TestRequest(
            **_envelope(1, n=3),
            task=TASK_SPEC,
            patch=PATCH,
            repo=REPO,
            test_command="pytest -q tests/test_auth.py",
        ),
        m.ReviewRequest(
            **_envelope(1, n=4),
            task=TASK_SPEC,
            patch=Patch(object_name=f"{RUN_ID}/{TASK_ID}/1.diff", sha256="ab" * 32),
            reviewer="review.security",
            repo=REPO,
            test_output="3 passed in 0.41s",
            tests=Patch(text="+def test_expired_token_is_refused(): ...\n"),
        ),
        m.PlanResult(
            **_envelope(task=False, n=5),
            tasks=[TaskSpec(id="t1-settings", title="JWT settings"), TASK_SPEC],
            usage=USAGE,
            model=MODEL,
        ),
        m.CodeResult(
            **_envelope(1, n=6),
            patch=PATCH,
            summary="Added verify() and a dependency on /api routes.",
            usage=USAGE,
            model=MODEL,
        ),
        m.TestResult(
            **_envelope(1, n=7),
            passed=False,
            output="FAILED tests/test_auth.py::test_expired_token - assert 500 == 401",
            tests_run=3,
            usage=Usage(),
        ),
        m.ReviewResult(
            **_envelope(1, n=8),
            reviewer="review.security",
            approved=False,
            comments=[
                m.ReviewComment(text="Pin the algorithm list.", path="app/auth.py", line=4),
                m.ReviewComment(text="Looks good otherwise."),
            ],
            usage=USAGE,
            model=MODEL,
        ),
        m.WorkFailed(
            **_envelope(2, n=9),
            role="coder",
            reason="delivered 5 times without an ack",
            deliveries=5,
        ),
        m.ApprovalNeeded(
            **_envelope(2, n=40),
            role="tester",
            approval_id=APPROVAL_ID,
            action="run_command",
            detail="make integration-test",
            reason="not a known test command",
            usage=USAGE,
            model=MODEL,
        ),
        m.WorkRetried(
            **_envelope(1, n=50),
            role="coder",
            delivery=2,
            usage=USAGE,
            reason="the model is unavailable: HTTP 503",
            model=MODEL,
        ),
        m.ResultBatch(
            **(_envelope(task=False, n=43) | {"run_id": ""}),  # its results may be of several runs
            results=(
                m.TestResult(
                    **_envelope(1, n=44),
                    passed=True,
                    output="3 passed",
                    tests_run=3,
                    tests=Patch(text="+def test_expired_token_is_refused(): ...\n"),
                ),
                m.ReviewResult(**_envelope(1, n=45), approved=True),
            ),
        ),
        m.UndecodableWork(
            **_envelope(task=False, n=46),
            error="unknown message type 'CodeRequestV9' (at $.type)",
            payload='{"type":"CodeRequestV9","run_id":"3f2a9c0d5b7e4e1f8a6b2c4d9e0f1a2b"}',
            payload_bytes=71,
        ),
        check,
        decision,
        m.RunStateChanged(
            **_envelope(task=False, n=12),
            state=RunState.EXECUTING,
            previous=RunState.PLAN_APPROVAL,
            reason="plan approved by alice",
        ),
        m.TaskStatesChanged(
            **_envelope(task=False, n=13),
            changes=[
                m.TaskChange(
                    task_id=TASK_ID,
                    attempt=1,
                    state=TaskState.TESTING,
                    previous=TaskState.CODING,
                    reason="patch ready",
                ),
                m.TaskChange(task_id="t2", attempt=0, state=TaskState.READY),
            ],
        ),
        m.WorkCancelled(**_envelope(1, n=28), reason="run cancelled by ana"),
        m.Progress(**_envelope(1, n=14), role="coder", message="editing app/auth.py (2/3 files)"),
        m.UsageReported(**_envelope(1, n=15), role="coder", usage=USAGE, model=MODEL),
        m.GateAudit(**_envelope(1, n=16), check=check, decision=decision),
        m.DeadLetter(
            **_envelope(task=False, n=17),
            subject="cy.work.coder",
            consumer="coder",
            error="malformed JSON: Input data was truncated",
            payload='{"type":"CodeRequest","goal":"Add JWT',
            payload_bytes=37,
        ),
        m.SubmitRun(
            **_envelope(task=False, n=18),
            goal="Add JWT auth to this FastAPI service",
            repo=RepoRef(path="/srv/repos/shop-api"),
            plan=[TASK_SPEC],
            budget=Budget(max_tokens=500_000, max_cost_usd=5.0),
            reviewers=["review", "review.security"],
            approve_plan=True,
            approve_merge=True,
            test_command="make test",
        ),
        m.CancelRun(**_envelope(task=False, n=19), reason="wrong repository"),
        m.StatusQuery(**_envelope(task=False, n=20)),
        m.ListApprovals(**_envelope(task=False, n=21)),
        m.Approve(**_envelope(task=False, n=22), approval_id=APPROVAL_ID, by="alice", comment="ok"),
        m.Deny(**_envelope(task=False, n=23), approval_id=APPROVAL_ID, by="bob", reason="no"),
        m.CollectArtifacts(**_envelope(task=False, n=41), dry_run=True),
        m.Accepted(**_envelope(task=False, n=24), detail=RUN_ID),
        m.RunStatus(**_envelope(task=False, n=25), runs=[sample_run()]),
        m.ApprovalList(
            **_envelope(task=False, n=26),
            approvals=[
                m.PendingApproval(
                    approval_id=APPROVAL_ID,
                    run_id=RUN_ID,
                    task_id=TASK_ID,
                    action="install_package",
                    detail="pip install pyjwt==2.9.0",
                    reason="new dependency",
                    attempt=1,
                    rule="install-new-dependency",
                    requested_at=SENT_AT,
                )
            ],
        ),
        m.ArtifactsCollected(
            **_envelope(task=False, n=42),
            dry_run=True,
            retention_seconds=2_592_000.0,
            deleted=[
                m.StoredArtifact(
                    name=f"patch/sha256-{PATCH.sha256}",
                    size=70_312,
                    modified_at=SENT_AT,
                )
            ],
            referenced=12,
            recent=3,
            clones=[
                m.StoredClone(
                    run_id=RUN_ID,
                    path=f"/srv/codeyard/runs/{RUN_ID}",
                    size=48_213_504,
                    unused_since=SENT_AT,
                    run_state=RunState.FAILED,
                )
            ],
            open_clones=2,
            recent_clones=5,
        ),
        m.ControlError(
            **_envelope(task=False, n=27), error="no run with this id", field="$.run_id"
        ),
    ]


def sample_for(cls: type[Envelope]) -> Envelope:
    """The sample of one message class."""
    for message in sample_messages():
        if type(message) is cls:
            return message
    raise KeyError(cls.__name__)
