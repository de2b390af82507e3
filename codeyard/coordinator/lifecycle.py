"""The state machines of a task and of a run (ARCHITECTURE.md, "Task life"), as tables.

Task::

    planned -> ready (deps merged) -> coding -> testing -> reviewing -> gated -> merged
    testing | reviewing | gated -> coding     feedback: test failure, review, conflict/regression
    any non-terminal -> failed | cancelled | awaiting_approval
    awaiting_approval -> the state it was parked from

Run::

    planning -> plan_approval? -> executing -> integrating -> done
    executing <-> awaiting_approval (budget)
    any non-terminal -> failed | cancelled

`move_task` and `move_run` are the only writers of `state`; anything else raises
`IllegalTransition`.
"""

from __future__ import annotations

from collections.abc import Mapping

from codeyard.schemas.model import TERMINAL_RUN_STATES as TERMINAL_RUN_STATES  # defined there
from codeyard.schemas.model import Run, RunState, Task, TaskState


class IllegalTransition(RuntimeError):
    """A state change the state machine does not allow."""

    def __init__(self, what: str, source: str, target: str, why: str = "") -> None:
        self.source = source
        self.target = target
        detail = f" ({why})" if why else ""
        super().__init__(f"{what}: illegal transition {source} -> {target}{detail}")


_T = TaskState
_R = RunState

TERMINAL_TASK_STATES = frozenset({_T.MERGED, _T.FAILED, _T.CANCELLED})
# States whose work is out with a worker (or, for gated, with the merge step).
WORKING_STATES = frozenset({_T.CODING, _T.TESTING, _T.REVIEWING, _T.GATED})
# States a task may be parked from, and so return to.
PARKABLE_STATES = frozenset({_T.PLANNED, _T.READY}) | WORKING_STATES

_ENDINGS = frozenset({_T.FAILED, _T.CANCELLED})
_ANY = _ENDINGS | {_T.AWAITING_APPROVAL}

TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    _T.PLANNED: _ANY | {_T.READY},
    _T.READY: _ANY | {_T.CODING},
    _T.CODING: _ANY | {_T.TESTING},
    _T.TESTING: _ANY | {_T.REVIEWING, _T.CODING},
    _T.REVIEWING: _ANY | {_T.GATED, _T.CODING},
    _T.GATED: _ANY | {_T.MERGED, _T.CODING},
    # Only back to `Task.parked_from`; `move_task` checks which.
    _T.AWAITING_APPROVAL: _ENDINGS | PARKABLE_STATES,
    _T.MERGED: frozenset(),
    _T.FAILED: frozenset(),
    _T.CANCELLED: frozenset(),
}

_RUN_ENDINGS = frozenset({_R.FAILED, _R.CANCELLED})

RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    _R.PLANNING: _RUN_ENDINGS | {_R.PLAN_APPROVAL, _R.EXECUTING},
    _R.PLAN_APPROVAL: _RUN_ENDINGS | {_R.EXECUTING},
    _R.EXECUTING: _RUN_ENDINGS | {_R.AWAITING_APPROVAL, _R.INTEGRATING},
    _R.AWAITING_APPROVAL: _RUN_ENDINGS | {_R.EXECUTING},
    _R.INTEGRATING: _RUN_ENDINGS | {_R.DONE},
    _R.DONE: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
}


def task_may_move(task: Task, target: TaskState) -> bool:
    if target not in TASK_TRANSITIONS[task.state]:
        return False
    if task.state is _T.AWAITING_APPROVAL and target in PARKABLE_STATES:
        return target == task.parked_from
    return True


def move_task(task: Task, target: TaskState) -> TaskState:
    """Move `task` to `target` and return the state it left; parking remembers where from."""
    source = task.state
    if not task_may_move(task, target):
        why = ""
        if source is _T.AWAITING_APPROVAL and target in PARKABLE_STATES:
            parked = task.parked_from.value if task.parked_from else "nowhere"
            why = f"it was parked from {parked}"
        raise IllegalTransition(f"task {task.spec.id!r}", source.value, target.value, why)
    if target is _T.AWAITING_APPROVAL:
        task.parked_from = source
    elif source is _T.AWAITING_APPROVAL:
        task.parked_from = None
    task.state = target
    return source


def move_run(run: Run, target: RunState) -> RunState:
    """Move `run` to `target` and return the state it left."""
    source = run.state
    if target not in RUN_TRANSITIONS[source]:
        raise IllegalTransition(f"run {run.run_id!r}", source.value, target.value)
    run.state = target
    return source
