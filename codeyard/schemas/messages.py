"""Every message that crosses the bus, grouped into one tagged union per subject family.

| family      | subjects               | union           |
|-------------|------------------------|-----------------|
| work        | cy.work.<role>         | `WorkItem`      |
| result      | cy.result.<role>       | `ResultMessage` |
| gate        | cy.gate.check (req/rep)| `GateMessage`   |
| events      | cy.events.<run_id>     | `RunEvent`      |
| control     | cy.ctl.* (req/rep)     | `Control`, replies `ControlReply` |
| presence    | cy.presence.<role>     | `WorkerPresence` (core NATS, not stored) |
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from codeyard.schemas.codec import decode
from codeyard.schemas.envelope import (
    Answer,
    Attempt,
    Envelope,
    Id,
    OptionalId,
    Timestamp,
    Work,
    utc_now,
)
from codeyard.schemas.model import (
    TERMINAL_RUN_STATES,
    Budget,
    Feedback,
    LongText,
    Patch,
    RepoRef,
    ReviewerName,
    Run,
    RunState,
    ShortText,
    TaskSpec,
    TaskState,
    TestCommand,
    Usage,
)

# --- work items: coordinator -> cy.work.<role> ------------------------------------------------


class PlanRequest(Work, kw_only=True, frozen=True):
    goal: LongText
    repo: RepoRef = RepoRef()
    constraints: list[LongText] = []
    feedback: list[Feedback] = []
    # The run's test command, which the repository summary names instead of a detected one
    # ("": detected).
    test_command: TestCommand = ""


class CodeRequest(Work, kw_only=True, frozen=True):
    goal: LongText
    task: TaskSpec
    repo: RepoRef = RepoRef()
    feedback: list[Feedback] = []


class TestRequest(Work, kw_only=True, frozen=True):
    __test__ = False  # not a pytest test class

    task: TaskSpec
    patch: Patch
    repo: RepoRef = RepoRef()
    test_command: TestCommand = ""  # the run's; "": detected in the repository


class ReviewRequest(Work, kw_only=True, frozen=True):
    task: TaskSpec
    patch: Patch
    reviewer: ReviewerName = "review"
    repo: RepoRef = RepoRef()
    test_output: LongText = ""
    # The tests the tester wrote for the task's acceptance criteria, a diff on top of `patch`:
    # merged with it, so reviewed with it. None when it wrote none.
    tests: Patch | None = None


WorkItem = PlanRequest | CodeRequest | TestRequest | ReviewRequest


# --- results: workers -> cy.result.<role> -----------------------------------------------------


# Every result that carries `usage` names the LLM `model` that answered (as the endpoint named
# it, else as configured), so the report can say which model did a role's work. "" when no
# model answered or the sender does not say (older workers: the field is defaulted so their
# results still decode).


class PlanResult(Answer, kw_only=True, frozen=True):
    tasks: list[TaskSpec]
    usage: Usage = Usage()
    model: ShortText = ""


class CodeResult(Answer, kw_only=True, frozen=True):
    patch: Patch
    summary: LongText = ""
    usage: Usage = Usage()
    model: ShortText = ""


class TestResult(Answer, kw_only=True, frozen=True):
    __test__ = False

    passed: bool
    output: LongText = ""
    tests_run: int = 0
    usage: Usage = Usage()
    model: ShortText = ""
    # The test files the tester wrote (and ran), a diff on top of the task's patch; kept and
    # merged with the task when the tests pass. Inline only (at most 64 KiB: tester.py).
    tests: Patch | None = None


class ReviewComment(msgspec.Struct, kw_only=True, frozen=True):
    text: LongText
    path: str = ""
    line: int = 0


class ReviewResult(Answer, kw_only=True, frozen=True):
    reviewer: ReviewerName = "review"
    approved: bool
    comments: list[ReviewComment] = []
    usage: Usage = Usage()
    model: ShortText = ""


class WorkFailed(Answer, kw_only=True, frozen=True):
    """Terminal failure of a work item: handler error, or delivered more often than allowed."""

    role: str
    reason: LongText
    deliveries: int = 0
    usage: Usage = Usage()  # what the work spent before it failed
    model: ShortText = ""


class ApprovalNeeded(Answer, kw_only=True, frozen=True):
    """The worker stopped before an action the safety gate sent for a person's approval and
    gave its work item back; the coordinator parks the task until the approval is answered,
    then sends the work again (and the gate then allows the approved action)."""

    role: str
    approval_id: Id
    action: str
    detail: LongText
    reason: LongText = ""
    # What the work spent before it stopped (the tester's LLM call comes before its command
    # reaches the gate); the work sent again after the answer spends anew. Defaulted, so a
    # message of an older worker still decodes.
    usage: Usage = Usage()
    model: ShortText = ""


class WorkRetried(Answer, kw_only=True, frozen=True):
    """One delivery of a work item spent `usage` (LLM calls), then handed the item back to be
    tried again later (the endpoint failing, no gate answering): no result will carry those
    tokens, so the worker reports them before it naks, and the run counts them now.

    `msg_id` follows from the work item's and `delivery`: each delivery reports only what it
    spent itself, once (JetStream's duplicate window stores a re-sent report once, and the
    coordinator remembers which reports it counted, for one replayed after a failover)."""

    role: str
    delivery: int
    usage: Usage
    reason: LongText = ""
    model: ShortText = ""


Result = (
    PlanResult | CodeResult | TestResult | ReviewResult | WorkFailed | ApprovalNeeded | WorkRetried
)


class UndecodableWork(Envelope, kw_only=True, frozen=True):
    """Work a worker could not decode, handed to the coordinator on the worker's result
    subject, which files it as a `DeadLetter` event (workers may not write events). Its
    `run_id` is the run the work names, if it names a valid one."""

    error: LongText
    payload: LongText  # its first 4 KiB, as text
    payload_bytes: int


class ResultBatch(Envelope, kw_only=True, frozen=True):
    """Results that one worker finished at the same moment, stored and delivered as one
    message: a worker running many handlers at once saves a publish, its ack, a delivery and
    the coordinator's ack per result. Each result keeps its own ids; the batch's `msg_id` is
    derived from theirs, and its `run_id` is empty (the results may be of several runs)."""

    results: Annotated[tuple[Result, ...], msgspec.Meta(min_length=1)]


ResultMessage = Result | ResultBatch | UndecodableWork
"""What `cy.result.<role>` carries: one result, or a batch of them, or work the worker could
not decode."""


# --- safety gate: request/reply on cy.gate.check ----------------------------------------------

# A merge check carries the whole diff (the coder refuses patches over 700,000 characters).
DiffText = Annotated[str, msgspec.Meta(max_length=800_000)]
ActionKind = Literal["run_command", "write_file", "install_package", "network", "merge", "plan"]
Decision = Literal["allow", "deny", "needs_approval"]


class ActionCheck(Envelope, kw_only=True, frozen=True):
    """May `role` do `action` (`detail`: the command, path, package, host or diff)?

    `require_approval` is a checkpoint: a person must approve even what the policy allows
    (never what it denies)."""

    action: ActionKind
    detail: DiffText
    role: str = ""
    require_approval: bool = False


class GateDecision(Envelope, kw_only=True, frozen=True):
    decision: Decision
    reason: LongText = ""
    rule: str = ""
    approval_id: OptionalId = ""


GateMessage = ActionCheck | GateDecision


# --- events: cy.events.<run_id> ---------------------------------------------------------------


class RunStateChanged(Envelope, kw_only=True, frozen=True):
    state: RunState
    previous: RunState | None = None
    reason: LongText = ""


class TaskChange(msgspec.Struct, kw_only=True, frozen=True):
    task_id: Id
    attempt: Attempt
    state: TaskState
    previous: TaskState | None = None
    reason: LongText = ""


class TaskStatesChanged(Envelope, kw_only=True, frozen=True):
    """Task transitions of one run, in the order they happened: one message per coordinator
    step, so a busy run does not cost a message per transition. Delivery is at least once:
    after a coordinator failover a transition may be reported again."""

    changes: list[TaskChange]


class Progress(Envelope, kw_only=True, frozen=True):
    role: str
    message: LongText


class UsageReported(Envelope, kw_only=True, frozen=True):
    """What one result's LLM calls cost, and the model that answered them ("": not named)."""

    role: str
    usage: Usage
    model: ShortText = ""


class WorkCancelled(Envelope, kw_only=True, frozen=True):
    """The coordinator no longer wants the work of (`task_id`, `attempt`) (the planning when
    `task_id` is empty): the run was cancelled or failed. Recorded on the run's events and sent
    to the workers on `cy.cancel.<run_id>`; a worker running it stops and drops the item, and
    one that receives the item later (for some minutes) drops it without running it."""

    reason: LongText = ""


class GateAudit(Envelope, kw_only=True, frozen=True):
    check: ActionCheck
    decision: GateDecision


class DeadLetter(Envelope, kw_only=True, frozen=True):
    """A message no one could decode. Kept (truncated) for the audit; the worker moved on."""

    subject: str
    consumer: str
    error: LongText
    payload: LongText
    payload_bytes: int


RunEvent = (
    RunStateChanged
    | TaskStatesChanged
    | WorkCancelled
    | Progress
    | UsageReported
    | GateAudit
    | DeadLetter
)


# --- control: cy.ctl.<verb> request/reply to the coordinator ----------------------------------

# How long the answer to a `SubmitRun` naming a repository may take: the coordinator clones the
# repository and publishes its snapshot first, minutes for a large one. Asking again with the
# same submission meanwhile waits for the same answer.
SUBMIT_PATIENCE = 600.0


class SubmitRun(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    goal: LongText
    repo: RepoRef = RepoRef()
    plan: list[TaskSpec] | None = None
    budget: Budget = Budget()
    reviewers: list[ReviewerName] = msgspec.field(default_factory=lambda: ["review"])
    approve_plan: bool = False
    approve_merge: bool = False
    # The shell line that runs the repository's tests, for the tester and the suite after each
    # merge ("": detected, `python -m pytest` or `npm test`). Defaulted, so a request of an
    # older client still decodes.
    test_command: TestCommand = ""

    def differences(self, run: Run) -> list[str]:
        """The settings in which this submission differs from `run`, the one stored under its
        id: none when it is that run's submission again (a client that lost the reply sends it
        once more). Only what the run keeps as it was submitted is compared: of its repository
        the path (the rest is where the run's own clone stands), not its budget (approvals
        raise it); the plan, if this submission has one, with the run's tasks (but for a run
        that ended before it had any: cancelled while its repository was prepared)."""
        settings = {
            "goal": (self.goal, run.goal),
            "repository": (self.repo.path, run.repo.path),
            "test command": (self.test_command.strip(), run.test_command),
            "reviewers": (self.reviewers, run.reviewers),
            "plan approval": (self.approve_plan, run.approve_plan),
            "merge approval": (self.approve_merge, run.approve_merge),
        }
        if self.plan is not None and (run.tasks or run.state not in TERMINAL_RUN_STATES):
            settings["plan"] = (self.plan, [task.spec for task in run.tasks.values()])
        return [name for name, (submitted, stored) in settings.items() if submitted != stored]


class CancelRun(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    reason: ShortText = "cancelled by user"


class StatusQuery(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Status of `run_id`, or of every run when `run_id` is empty.

    A run may be too big for one reply (thousands of tasks, or long test outputs and feedback).
    A client that reads it in pages says so (`paged`): the reply then holds the run's tasks
    after the task `after` (in task id order) that fit, and names in `RunStatus.more_after`
    the task the next page starts after; a run that fits comes whole. Without `paged`, a run
    too big is refused. Defaulted, so older clients and coordinators decode it."""

    paged: bool = False
    after: OptionalId = ""


# The greatest id there can be (see ID_PATTERN): no task's id comes after it, so the page of a
# run's tasks after it is the run's header alone, a few bytes for a run of 10,000 tasks (which
# the coordinator then reads alone).
AFTER_EVERY_ID = "z" * 64


class ListApprovals(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The pending approvals of every open run, or of the run `run_id` names."""


class Approve(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    approval_id: Id
    by: ShortText = ""
    comment: LongText = ""


class Deny(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    approval_id: Id
    by: ShortText = ""
    reason: LongText = ""


class CollectArtifacts(Envelope, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Delete now the `cy_artifacts` objects (snapshot bundles, offloaded patches) that no open
    run uses and that nobody published or reused within the retention, and the integration
    clones of runs that ended (or no longer exist) longer than the retention ago; with
    `dry_run`, only tell which they are."""

    dry_run: bool = False


Control = SubmitRun | CancelRun | StatusQuery | ListApprovals | Approve | Deny | CollectArtifacts


# A person's request names only fields codeyard knows: a typo (`aprove_merge`, a task's
# `depends_on`) ignored would drop what its sender relies on. The requests themselves forbid
# unknown fields; the parts of a submission that other messages carry too (tasks and repository
# in work items, the budget in status replies) are checked through these: workers and clients
# must keep reading those of a newer coordinator.
class _KnownTaskFields(TaskSpec, frozen=True, forbid_unknown_fields=True):
    pass


class _KnownBudgetFields(Budget, frozen=True, forbid_unknown_fields=True):
    pass


class _KnownRepoFields(RepoRef, frozen=True, forbid_unknown_fields=True):
    pass


class _SubmissionParts(msgspec.Struct, frozen=True):
    plan: list[_KnownTaskFields] | None = None
    budget: _KnownBudgetFields | None = None
    repo: _KnownRepoFields | None = None


def decode_control(data: bytes) -> Control:
    """The control request in `data`, or `MessageError` naming what is wrong, down to a field
    that no request, task, budget or repository has."""
    request: Control = decode(data, Control)
    if isinstance(request, SubmitRun):
        decode(data, _SubmissionParts)
    return request


def decode_plan(data: bytes) -> list[TaskSpec]:
    """The tasks of a plan a person wrote, or `MessageError` naming what is wrong, down to a
    field that no task has."""
    decode(data, list[_KnownTaskFields])
    return decode(data, list[TaskSpec])


ApprovalStatus = Literal["pending", "approved", "denied"]


# The actions of the questions a run asks itself, with no task: the gate's are of its actions.
RUN_QUESTIONS = ("plan", "budget")


class PendingApproval(msgspec.Struct, kw_only=True, frozen=True):
    """A question for a person, kept in `cy_approvals` under its id; answered ones stay (with
    who answered and why) so the gate can honour the answer when the work comes back."""

    approval_id: Id
    run_id: Id
    task_id: OptionalId = ""
    attempt: int = 0
    action: str
    detail: LongText
    reason: LongText = ""
    rule: str = ""
    status: ApprovalStatus = "pending"
    requested_at: Timestamp = msgspec.field(default_factory=utc_now)
    answered_by: ShortText = ""
    answer: LongText = ""
    # The asking run's `Run.submission`, for its own questions (plan, budget): those of an
    # earlier submission of the same run id, cut before its run was stored, are not its own.
    submission: ShortText = ""
    # An answer's seal, made by the coordinator that recorded it (`codeyard.bus.service_key`):
    # a gate with the key honours no answer without it.
    seal: ShortText = ""


class Accepted(Envelope, kw_only=True, frozen=True):
    detail: ShortText = ""
    # A submission that created its run (rather than finding it there): a client following it
    # knows it has every event to come, and need not ask whether it ended.
    created: bool = False


# `Accepted.detail` of a cancel of a run cancelled already (the request sent again, say).
ALREADY_CANCELLED = "already cancelled"


class RunStatus(Envelope, kw_only=True, frozen=True):
    runs: list[Run]
    # How many ended runs' headers a status of every run leaves out (the oldest ended first)
    # so that the reply fits in one message: `cy_runs` keeps every run. Defaulted, so older
    # clients and coordinators still decode it.
    omitted: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A page of a run's tasks (see `StatusQuery`): the last task of this page, when more come
    # after it; empty when the run's tasks are all there.
    more_after: OptionalId = ""


class ApprovalList(Envelope, kw_only=True, frozen=True):
    approvals: list[PendingApproval]  # oldest first
    # How many of the newest are left out so that the reply fits in one message (a question
    # carries up to three long texts). Defaulted, so older clients and coordinators decode it.
    omitted: Annotated[int, msgspec.Meta(ge=0)] = 0


class ControlError(Envelope, kw_only=True, frozen=True):
    error: LongText
    field: str = ""
    # The request was not done (its coordinator stopped leading first): send it again, to
    # whichever leads next. Defaulted, so older clients and coordinators decode it.
    retry: bool = False


def unknown_run(run_id: str) -> ControlError:
    """The coordinator's answer to a status request for a run it knows nothing of; clients
    tell it from its other refusals (it did not finish in time, ...) by its error."""
    return ControlError(run_id=run_id, error=f"no run {run_id!r}", field="$.run_id")


class StoredArtifact(msgspec.Struct, kw_only=True, frozen=True):
    """An object of the `cy_artifacts` store, as garbage collection sees it."""

    name: str
    size: int
    modified_at: Timestamp  # last published, or last reused by a publisher that found it there


class StoredClone(msgspec.Struct, kw_only=True, frozen=True):
    """A run's integration clone on the leading coordinator's disk, as garbage collection sees
    it."""

    run_id: Id
    path: str  # the run's directory under CODEYARD_DATA_DIR/runs, which goes whole
    size: int  # bytes of its files
    unused_since: Timestamp  # when its run ended; with no such run, when the clone last changed
    run_state: RunState | None = None  # None: no run of this id exists (any more)


class ArtifactsCollected(Envelope, kw_only=True, frozen=True):
    """What a `CollectArtifacts` deleted (with `dry_run`: would delete), and why others stay."""

    dry_run: bool
    retention_seconds: float
    deleted: list[StoredArtifact]
    referenced: int = 0  # kept: an open run uses them
    recent: int = 0  # kept: published or reused within the retention
    clones: list[StoredClone] = []  # integration clones deleted (with `dry_run`: to delete)
    open_clones: int = 0  # kept: their run is open
    recent_clones: int = 0  # kept: their run ended (no run: they changed) within the retention


ControlReply = Accepted | RunStatus | ApprovalList | ArtifactsCollected | ControlError


# --- presence: workers -> cy.presence.<role> (core NATS) -------------------------------------


class WorkerPresence(msgspec.Struct, kw_only=True, frozen=True):
    """A worker says it is there, every few seconds and when it starts and stops: what
    `codeyard workers` lists. Not stored: a worker is present while its announcements keep
    coming, so a crashed one disappears once its last announcement is older than the timeout."""

    worker_id: Id
    role: str
    pid: int
    host: ShortText
    concurrency: int
    in_flight: int = 0
    started_at: Timestamp
    sent_at: Timestamp = msgspec.field(default_factory=utc_now)
    stopping: bool = False  # the last announcement of a worker shutting down

    @property
    def busy(self) -> bool:
        return self.in_flight > 0
