"""What `RunEngine.handle` accepts: worker results, merge outcomes and control commands.

Results name the `(task_id, attempt)` they answer. The engine applies one only while the task
is at that attempt and in the state that result answers; anything else (a duplicate, an old
attempt, a result for another phase) comes back as an `Ignored` effect and changes nothing.
"""

from __future__ import annotations

import msgspec

from codeyard.schemas.model import Budget, FeedbackKind, RepoRef, TaskSpec, Usage

# --- planning ---------------------------------------------------------------------------------


class StartPlanning(msgspec.Struct, frozen=True):
    """Ask the planner for a plan (skip this when the plan came with the submission)."""


class PlanProposed(msgspec.Struct, frozen=True):
    """The plan to execute, from the planner or from the submission."""

    tasks: tuple[TaskSpec, ...]
    usage: Usage = Usage()
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine


class PlanApproved(msgspec.Struct, frozen=True):
    """A person accepted the plan of a run submitted with `approve_plan`."""


class PlanRejected(msgspec.Struct, frozen=True):
    """A person turned the plan down; the run is cancelled."""

    reason: str = "plan rejected"


# --- task results -----------------------------------------------------------------------------


class Coded(msgspec.Struct, frozen=True):
    """The coder produced a patch for this attempt."""

    task_id: str
    attempt: int
    usage: Usage = Usage()
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine


class Tested(msgspec.Struct, frozen=True):
    """The tester ran the tests on the attempt's patch; `report` goes back to the coder."""

    __test__ = False  # not a pytest test class

    task_id: str
    attempt: int
    passed: bool
    report: str = ""
    usage: Usage = Usage()
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine


class Reviewed(msgspec.Struct, frozen=True):
    """One reviewer's verdict; `comments` go back to the coder when not approved."""

    task_id: str
    attempt: int
    reviewer: str
    approved: bool
    comments: str = ""
    usage: Usage = Usage()
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine


class Merged(msgspec.Struct, frozen=True):
    """The attempt's commit is on the run's result branch; `repo` is where the run's code is
    now (the new integration head and its snapshot), when the integrator moved it."""

    task_id: str
    attempt: int
    repo: RepoRef | None = None


class MergeFailed(msgspec.Struct, frozen=True):
    """The merge conflicted or broke what was merged before; the task goes back to coding."""

    task_id: str
    attempt: int
    kind: FeedbackKind = FeedbackKind.CONFLICT
    report: str = ""


class WorkAbandoned(msgspec.Struct, frozen=True):
    """A worker gave the work up for good (poison message, handler error): the task fails.

    `role` is the worker's role; with `task_id` empty and role `planner` it is the planning.
    """

    task_id: str
    attempt: int
    role: str
    reason: str
    usage: Usage = Usage()
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine


class UnappliedSpend(msgspec.Struct, frozen=True):
    """A delivery of the work of (`task_id`, `attempt`) (the planning's when `task_id` is
    empty) spent `usage`, and its answer is not applied: it handed the work back to be tried
    again (`WorkRetried`), or its answer came too late (a sibling reviewer sent the task back
    first, say). Counted whatever the task does now (the tokens are spent), once per `report`
    (the id of the message that reported it)."""

    task_id: str
    attempt: int
    role: str
    usage: Usage
    report: str


# --- approvals --------------------------------------------------------------------------------


class ParkTask(msgspec.Struct, frozen=True):
    """An action of the task needs a person's approval: park it in `awaiting_approval`.

    The worker is expected to have given its work item up; on approval the work of the state
    the task was parked from is sent again, at the same attempt.
    """

    task_id: str
    attempt: int
    reason: str = ""
    usage: Usage = Usage()  # what the worker spent before it stopped, counted when parked
    result_id: str = ""  # the msg_id of the result it stands for: see RunEngine
    role: str = ""  # the worker's that stopped; empty when the merge step asks


class ResumeTask(msgspec.Struct, frozen=True):
    """The answer for a parked task: approved -> back where it was, denied -> it fails."""

    task_id: str
    attempt: int
    approved: bool
    reason: str = ""


class ResumeRun(msgspec.Struct, frozen=True):
    """Continue a run paused over budget, with `budget` replacing the run's budget if given."""

    budget: Budget | None = None


# --- control ----------------------------------------------------------------------------------


class Cancel(msgspec.Struct, frozen=True):
    reason: str = "cancelled by user"


class CapacityChanged(msgspec.Struct, frozen=True):
    """How many tasks may be in flight at once (usually the number of coders)."""

    capacity: int


class Integrated(msgspec.Struct, frozen=True):
    """The final integration of the result branch finished."""

    ok: bool
    report: str = ""


Event = (
    StartPlanning
    | PlanProposed
    | PlanApproved
    | PlanRejected
    | Coded
    | Tested
    | Reviewed
    | Merged
    | MergeFailed
    | WorkAbandoned
    | UnappliedSpend
    | ParkTask
    | ResumeTask
    | ResumeRun
    | Cancel
    | CapacityChanged
    | Integrated
)
