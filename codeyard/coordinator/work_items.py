"""Engine effects as wire messages: work items for the roles and events for the stream.

Message ids are derived from what the message stands for, so when a new leader re-sends the
work its predecessor may or may not have sent, JetStream's duplicate window drops the copy.
A submission cut before its run was stored, and submitted again, must not have its work dropped
as a copy of the lost one's (whose answers found no run): a plan request's id also names the
loading of the run that sent it (`Run.planning_dispatched_by`), and a task's work names the
submission (`Run.submission`).
"""

from __future__ import annotations

import functools
import hashlib
from typing import TypedDict

from codeyard.bus.service_key import ServiceKey
from codeyard.coordinator.effects import (
    CODER,
    PLANNER,
    TESTER,
    CancelWork,
    Dispatch,
    RunMoved,
    TaskMoved,
)
from codeyard.schemas.codec import encode
from codeyard.schemas.messages import (
    CodeRequest,
    PlanRequest,
    ReviewRequest,
    RunStateChanged,
    TaskChange,
    TaskStatesChanged,
    TestRequest,
    WorkCancelled,
    WorkItem,
)
from codeyard.schemas.model import Patch, Run

CHANGES_BYTES = 64 * 1024  # the task transitions one event holds, at most (about)


class EnvelopeFields(TypedDict):
    run_id: str
    task_id: str
    attempt: int
    trace_id: str
    proof: str
    msg_id: str


def derived_id(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


def submission_trace(run: Run) -> str:
    """The `trace_id` of the run's work items, which every answer copies: it names the run's
    submission, so that an answer to the work of another submission of the same run id (one
    cut before its run was stored) is told apart. The run id, for runs of older versions."""
    return _trace(run.run_id, run.submission) if run.submission else run.run_id


@functools.lru_cache(maxsize=4096)  # asked for each work item and each result
def _trace(run_id: str, submission: str) -> str:
    return derived_id(run_id, submission)


def answers_this_submission(run: Run, trace_id: str) -> bool:
    """Whether an answer with `trace_id` answers work of the run as submitted (or work sent by
    an older coordinator version, whose trace was the run id, or a sender that left the trace
    out: the README's contract asks for it, the result schemas do not require it)."""
    return trace_id in (submission_trace(run), run.run_id, "")


def work_item(run: Run, dispatch: Dispatch, proofs: ServiceKey | None = None) -> WorkItem:
    """The message that asks `dispatch.role` for the work of the task's current state, with
    its proof when the coordinator has `proofs` to make one."""
    run_id, task_id, attempt = run.run_id, dispatch.task_id, dispatch.attempt
    trace = submission_trace(run)
    proof = proofs.work_proof(dispatch.role, run_id, trace, task_id, attempt) if proofs else ""
    if dispatch.role == PLANNER:
        return PlanRequest(
            run_id=run_id,
            attempt=attempt,
            trace_id=trace,
            proof=proof,
            msg_id=derived_id(run_id, PLANNER, attempt, *_epoch(run.planning_dispatched_by)),
            goal=run.goal,
            repo=run.repo,
            test_command=run.test_command,
        )
    task = run.tasks[task_id]
    envelope = EnvelopeFields(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        trace_id=trace,
        proof=proof,
        msg_id=derived_id(
            run_id, task_id, dispatch.role, attempt, task.dispatches, *_epoch(run.submission)
        ),
    )
    patch = task.patch or Patch()
    if dispatch.role == CODER:
        return CodeRequest(
            **envelope,
            goal=run.goal,
            task=task.spec,
            repo=run.repo,
            feedback=list(dispatch.feedback),
        )
    if dispatch.role == TESTER:
        return TestRequest(
            **envelope, task=task.spec, patch=patch, repo=run.repo, test_command=run.test_command
        )
    return ReviewRequest(
        **envelope,
        task=task.spec,
        patch=patch,
        reviewer=dispatch.role,
        repo=run.repo,
        test_output=task.test_output,
        tests=task.tests,
    )


def _epoch(token: str) -> tuple[str, ...]:
    # left out when empty: work sent by an older version keeps its id when re-sent
    return (token,) if token else ()


def task_changes(
    run: Run, moves: list[TaskMoved], max_bytes: int = CHANGES_BYTES
) -> list[TaskStatesChanged]:
    """The events for the task transitions of a step: one, or several of about `max_bytes`
    each when one would be bigger (cancelling a run of 10,000 tasks moves them all; one event
    would be over any server's message limit). An event's id is derived from its transitions,
    so a step replayed identically after a failover is stored once."""
    changes = [
        TaskChange(
            task_id=move.task_id,
            attempt=move.attempt,
            state=move.state,
            previous=move.previous,
            reason=move.reason[:20_000],
        )
        for move in moves
    ]
    if sum(_most_bytes(change) for change in changes) <= max_bytes:  # a step's, nearly always
        return [_changed(run, changes)]
    chunks: list[list[TaskChange]] = [[]]
    size = 0
    for change in changes:
        length = len(encode(change))
        if chunks[-1] and size + length > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(change)
        size += length
    return [_changed(run, changes) for changes in chunks]


def _most_bytes(change: TaskChange) -> int:
    """What `change` takes encoded, at most: every character of its texts escaped (`\\u001f`),
    with room for its field names, attempt and states."""
    return 192 + 6 * (len(change.task_id) + len(change.reason))


def _changed(run: Run, changes: list[TaskChange]) -> TaskStatesChanged:
    identity = ",".join(
        f"{c.task_id}:{c.attempt}:{run.tasks[c.task_id].dispatches}:{c.state.value}"
        for c in changes
    )
    return TaskStatesChanged(
        run_id=run.run_id,
        trace_id=run.run_id,
        msg_id=derived_id(run.run_id, identity),
        changes=changes,
    )


def run_event(run: Run, moved: RunMoved) -> RunStateChanged:
    return RunStateChanged(
        run_id=run.run_id,
        trace_id=run.run_id,
        msg_id=derived_id(run.run_id, moved.previous, moved.state, run.updated_at.isoformat()),
        state=moved.state,
        previous=moved.previous,
        reason=moved.reason[:20_000],
    )


def work_cancelled(run: Run, cancel: CancelWork) -> WorkCancelled:
    return WorkCancelled(
        run_id=run.run_id,
        task_id=cancel.task_id,
        attempt=cancel.attempt,
        trace_id=submission_trace(run),  # the submission whose work it withdraws
        msg_id=derived_id(
            run.run_id, "cancel", cancel.task_id, cancel.attempt, *_epoch(run.submission)
        ),
        reason=run.error[:20_000],
    )
