"""What `RunEngine.handle` returns: the commands and notices the I/O layer carries out, in order.

Commands: `Dispatch` (a work item for a role), `Merge`, `Integrate`, `CancelWork`,
`RequestApproval`. Notices: `TaskMoved`, `RunMoved`, `RunFinished` (for the events stream) and
`Ignored` (an input that changed nothing, and why).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from codeyard.coordinator.events import Event
from codeyard.schemas.model import Feedback, RunState, TaskState

PLANNER = "planner"
CODER = "coder"
TESTER = "tester"


class Dispatch(msgspec.Struct, frozen=True):
    """Send work for `task_id` at `attempt` to `role` (`planner`, `coder`, `tester`, `review`,
    `review.<name>`). The planning has an empty `task_id`. `feedback` holds why earlier
    attempts went back to the coder, oldest first."""

    role: str
    task_id: str
    attempt: int
    feedback: tuple[Feedback, ...] = ()


class Merge(msgspec.Struct, frozen=True):
    """Ask the safety gate, then merge the attempt's commit into the run's result branch;
    answer with `Merged`, `MergeFailed` or `ParkTask`."""

    task_id: str
    attempt: int


class Integrate(msgspec.Struct, frozen=True):
    """Every task is merged: finish the result branch; answer with `Integrated`."""


class CancelWork(msgspec.Struct, frozen=True):
    """Stop whatever is out for this task's attempt (planning: empty `task_id`)."""

    task_id: str
    attempt: int


class RequestApproval(msgspec.Struct, frozen=True):
    """Ask a person: `kind` is `plan` (answer `PlanApproved`/`PlanRejected`) or `budget`
    (answer `ResumeRun` with a larger budget, or `Cancel`). `number` counts the run's questions
    (`Run.questions`): the run waits for the answer to its latest one only."""

    kind: Literal["plan", "budget"]
    reason: str
    number: int = 0


class TaskMoved(msgspec.Struct, frozen=True):
    task_id: str
    attempt: int
    previous: TaskState
    state: TaskState
    reason: str = ""


class RunMoved(msgspec.Struct, frozen=True):
    previous: RunState
    state: RunState
    reason: str = ""


class RunFinished(msgspec.Struct, frozen=True):
    """The run reached `done`, `failed` or `cancelled`; nothing more will be dispatched."""

    state: RunState
    reason: str = ""


class Ignored(msgspec.Struct, frozen=True):
    """`event` was not applied (duplicate, stale attempt, wrong phase, run over...).

    `early`: a worker's answer to work the run has not sent, as far as it knows. The step that
    sent the work was lost (its coordinator died or reloaded before storing it) and the answer
    came before the result that takes the run there again: that result was not acked, so it
    comes back, and the step it redoes sends the same work id, which the work stream drops as
    a duplicate. The answer is then the only one that will come: keep it to apply later.
    """

    event: Event
    reason: str
    early: bool = False


Effect = (
    Dispatch
    | Merge
    | Integrate
    | CancelWork
    | RequestApproval
    | TaskMoved
    | RunMoved
    | RunFinished
    | Ignored
)
