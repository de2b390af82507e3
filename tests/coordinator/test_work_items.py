"""Work item ids: the same work keeps its id (a new leader's re-send is dropped as a copy),
another submission of the same run id gets new ones. Events of task transitions: each of a
size a server takes."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from codeyard.coordinator import Dispatch, TaskMoved
from codeyard.coordinator.work_items import _most_bytes, derived_id, task_changes, work_item
from codeyard.schemas import encode
from codeyard.schemas.messages import TaskChange
from codeyard.schemas.model import Task, TaskState
from tests.coordinator.plans import new_run, spec


def coder_work_id(submission: str, dispatches: int = 1) -> str:
    run = msgspec.structs.replace(new_run(), submission=submission)
    run.tasks["x"] = Task(spec=spec("x"), dispatches=dispatches)
    return work_item(run, Dispatch("coder", "x", 1)).msg_id


def test_the_same_work_of_the_same_submission_keeps_its_id() -> None:
    assert coder_work_id("s1") == coder_work_id("s1")
    assert coder_work_id("s1", dispatches=2) != coder_work_id("s1")  # sent again on purpose


def test_a_run_submitted_again_sends_its_work_under_new_ids() -> None:
    """The first submission was cut before its run was stored: its work was answered, and the
    answers found no run. The same work under the same ids would be dropped as copies."""
    assert coder_work_id("s1") != coder_work_id("s2")


def test_work_of_a_run_stored_by_an_older_version_keeps_the_id_that_version_gave_it() -> None:
    """Runs without a submission token were stored before there was one: an upgraded leader
    re-sending their work must produce the ids the old leader sent it under."""
    assert coder_work_id("") == derived_id("run1", "x", "coder", 1, 1)


def test_the_transitions_of_a_step_are_several_events_when_one_would_be_too_big() -> None:
    """Cancelling a run of 10,000 tasks moves every one: in one event, 2.8 MB, which no
    server took, so the step failed, and failed again when the run was loaded."""
    run = new_run()
    moves = []
    for index in range(1_000):
        run.tasks[f"t{index}"] = Task(spec=spec(f"t{index}"))
        moves.append(TaskMoved(f"t{index}", 0, TaskState.PLANNED, TaskState.CANCELLED, "why " * 50))

    events = task_changes(run, moves, max_bytes=20_000)

    assert len(events) > 10
    assert all(len(encode(event)) < 21_000 for event in events)
    told = [(change.task_id, change.state) for event in events for change in event.changes]
    assert told == [(move.task_id, move.state) for move in moves]  # in order, each once
    assert len({event.msg_id for event in events}) == len(events)
    assert task_changes(run, moves[:3])[0].msg_id == task_changes(run, moves[:3])[0].msg_id


@given(
    reason=st.text(max_size=300),
    previous=st.sampled_from([None, *TaskState]),
    state=st.sampled_from(list(TaskState)),
    attempt=st.integers(min_value=0, max_value=10**6),
)
def test_a_step_is_measured_by_a_bound_only_when_its_changes_surely_fit(
    reason: str, previous: TaskState | None, state: TaskState, attempt: int
) -> None:
    """Each change's bound is at least what it takes encoded (control characters escaped, any
    other text as UTF-8), so a step told as one event without encoding its changes one by
    one fits as surely as when they were."""
    change = TaskChange(
        task_id="t-1_x", attempt=attempt, state=state, previous=previous, reason=reason
    )
    assert len(encode(change)) + 1 <= _most_bytes(change)  # (+1: the comma between changes)


def test_a_step_the_bound_cannot_vouch_for_is_split_by_its_changes_encoded_sizes() -> None:
    """15 reasons of 1,000 accented letters: the bound allows 6 bytes a letter (90 kB in all),
    UTF-8 takes 2 (about 30 kB): two events of at most 20 kB, as when every change was
    measured."""
    run = new_run()
    run.tasks["t"] = Task(spec=spec("t"))
    moves = [TaskMoved("t", 0, TaskState.PLANNED, TaskState.CANCELLED, "é" * 1_000)] * 15

    events = task_changes(run, moves, max_bytes=20_000)

    assert len(events) == 2
    assert all(len(encode(event)) < 21_000 for event in events)
    assert sum(len(event.changes) for event in events) == 15
