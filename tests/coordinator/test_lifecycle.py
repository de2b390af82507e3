"""The task and run state machines: every pair of states, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from codeyard.coordinator import (
    PARKABLE_STATES,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    IllegalTransition,
    move_run,
    move_task,
)
from codeyard.schemas.model import Run, RunState, Task, TaskState
from tests.coordinator.plans import spec

S = TaskState
R = RunState

# The architecture's task life, written out independently of the implementation's table.
FORWARD = {
    (S.PLANNED, S.READY),
    (S.READY, S.CODING),
    (S.CODING, S.TESTING),
    (S.TESTING, S.REVIEWING),
    (S.REVIEWING, S.GATED),
    (S.GATED, S.MERGED),
}
FEEDBACK = {(S.TESTING, S.CODING), (S.REVIEWING, S.CODING), (S.GATED, S.CODING)}
NON_TERMINAL = [s for s in S if s not in {S.MERGED, S.FAILED, S.CANCELLED}]
ESCAPES = {
    (s, end)
    for s in NON_TERMINAL
    for end in (S.FAILED, S.CANCELLED, S.AWAITING_APPROVAL)
    if s is not S.AWAITING_APPROVAL or end is not S.AWAITING_APPROVAL
}
TASK_ALLOWED = FORWARD | FEEDBACK | ESCAPES  # plus un-parking, checked separately

RUN_ALLOWED = {
    (R.PLANNING, R.PLAN_APPROVAL),
    (R.PLANNING, R.EXECUTING),
    (R.PLAN_APPROVAL, R.EXECUTING),
    (R.EXECUTING, R.INTEGRATING),
    (R.EXECUTING, R.AWAITING_APPROVAL),
    (R.AWAITING_APPROVAL, R.EXECUTING),
    (R.INTEGRATING, R.DONE),
} | {
    (r, end)
    for r in R
    if r not in {R.DONE, R.FAILED, R.CANCELLED}
    for end in (R.FAILED, R.CANCELLED)
}


def task_in(state: TaskState, parked_from: TaskState | None = None) -> Task:
    return Task(spec=spec("t"), state=state, parked_from=parked_from)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_every_task_transition_outside_parking(source: TaskState, target: TaskState) -> None:
    if source is S.AWAITING_APPROVAL:
        return  # depends on where it was parked from: next test
    task = task_in(source)
    if (source, target) in TASK_ALLOWED:
        assert move_task(task, target) is source
        assert task.state is target
    else:
        with pytest.raises(IllegalTransition) as raised:
            move_task(task, target)
        assert str(raised.value) == f"task 't': illegal transition {source} -> {target}"
        assert task.state is source


@pytest.mark.parametrize("parked_from", sorted(PARKABLE_STATES))
@pytest.mark.parametrize("target", list(S))
def test_a_parked_task_returns_only_where_it_came_from(
    parked_from: TaskState, target: TaskState
) -> None:
    task = task_in(S.AWAITING_APPROVAL, parked_from=parked_from)
    if target in (parked_from, S.FAILED, S.CANCELLED):
        move_task(task, target)
        assert task.state is target
        assert task.parked_from is None
    else:
        with pytest.raises(IllegalTransition):
            move_task(task, target)


def test_parking_remembers_the_state_and_the_message_says_where_from() -> None:
    task = task_in(S.TESTING)
    move_task(task, S.AWAITING_APPROVAL)
    assert task == task_in(S.AWAITING_APPROVAL, parked_from=S.TESTING)
    with pytest.raises(IllegalTransition, match=r"coding \(it was parked from testing\)"):
        move_task(task, S.CODING)
    move_task(task, S.TESTING)
    assert task == task_in(S.TESTING)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(R, R)))
def test_every_run_transition(source: RunState, target: RunState) -> None:
    run = Run(run_id="r", goal="g", state=source)
    if (source, target) in RUN_ALLOWED:
        assert move_run(run, target) is source
        assert run.state is target
    else:
        with pytest.raises(IllegalTransition, match=f"run 'r': illegal transition {source} -> "):
            move_run(run, target)
        assert run.state is source


def test_the_tables_match_the_architecture() -> None:
    table = {(s, t) for s, targets in TASK_TRANSITIONS.items() for t in targets}
    unpark = {(S.AWAITING_APPROVAL, s) for s in PARKABLE_STATES}
    assert table == TASK_ALLOWED | unpark
    assert {(s, t) for s, targets in RUN_TRANSITIONS.items() for t in targets} == RUN_ALLOWED
    assert all(not TASK_TRANSITIONS[s] for s in TERMINAL_TASK_STATES)
    assert all(not RUN_TRANSITIONS[s] for s in TERMINAL_RUN_STATES)
