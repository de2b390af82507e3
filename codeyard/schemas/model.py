"""The task-graph model: what a run and its tasks are, as stored in the `cy_runs` KV bucket.

These are plain data. The rules for moving between states live in `codeyard.coordinator`.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime
from typing import Annotated

import msgspec

from codeyard.schemas.envelope import AT_THE_END, Attempt, Id, utc_now

SHORT_TEXT_CHARS = 200
ShortText = Annotated[str, msgspec.Meta(max_length=SHORT_TEXT_CHARS)]
LONG_TEXT_CHARS = 20_000
LongText = Annotated[str, msgspec.Meta(max_length=LONG_TEXT_CHARS)]


def encodable(text: str) -> str:
    """`text` with any lone UTF-16 surrogate replaced by "?": JSON from outside (an LLM
    endpoint's answer, `\\ud83d` without its pair) may carry one, and whatever holds it (a
    message, a request sent back to the model) could not be encoded."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def clip(text: str, limit: int = LONG_TEXT_CHARS) -> str:
    """`text` cut to fit in `limit` characters (a `LongText`), its end saying it was cut, made
    `encodable`."""
    text = encodable(text)
    if len(text) <= limit:
        return text
    mark = f" [... {len(text) - limit} more characters cut]"
    return text[: limit - len(mark)] + mark


# The shell line a run's tests run with (`codeyard run --test-command`): the tester and the
# suite after each merge run it with `/bin/sh -c` in the sandbox, once the safety gate allowed
# it. Bounded as the default policy bounds a command line it parses (`max_command_chars`); no
# NUL, which no command line can carry (the sandbox could not even start it). "" means
# detected in the repository (`python -m pytest`, `npm test`).
TEST_COMMAND_CHARS = 20_000
TestCommand = Annotated[
    str,
    msgspec.Meta(
        max_length=TEST_COMMAND_CHARS,
        pattern=r"^[^\x00]*$",
        description="a shell command line, run with /bin/sh -c; empty: detected",
    ),
]
ReviewerName = Annotated[
    str, msgspec.Meta(pattern=r"^review(\.[a-z0-9][a-z0-9_-]{0,31})?$" + AT_THE_END)
]
# Relative units: only ratios between the tasks of one plan matter. The bound keeps infinity out.
Effort = Annotated[float, msgspec.Meta(gt=0, le=10_000)]


class TaskState(enum.StrEnum):
    PLANNED = "planned"
    READY = "ready"
    CODING = "coding"
    TESTING = "testing"
    REVIEWING = "reviewing"
    GATED = "gated"
    MERGED = "merged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    AWAITING_APPROVAL = "awaiting_approval"


class RunState(enum.StrEnum):
    PLANNING = "planning"
    PLAN_APPROVAL = "plan_approval"
    EXECUTING = "executing"
    AWAITING_APPROVAL = "awaiting_approval"
    INTEGRATING = "integrating"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A run in one of these never changes again (and its work is withdrawn, see `bus.run_ends`).
TERMINAL_RUN_STATES = frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED})


# Usage figures are never negative (a result claiming negative spend would shrink its run's and
# dodge the budget) and have bounds where sums stop too: far above any real run, far below what
# JSON and msgspec carry. Unbounded, two results claiming 1e308 USD added up to infinity, which
# JSON writes as null: a run record no coordinator could read back.
MAX_USAGE_COUNT = 2**53
MAX_COST_USD = 1e12
UsageCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_USAGE_COUNT)]


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    """LLM usage of one call, one result or a whole run. Sums saturate at the bounds."""

    calls: UsageCount = 0
    prompt_tokens: UsageCount = 0
    completion_tokens: UsageCount = 0
    cost_usd: Annotated[float, msgspec.Meta(ge=0, le=MAX_COST_USD)] = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        ).within_bounds()

    def within_bounds(self) -> Usage:
        """This usage with each figure brought within its bounds (one built in this process is
        not validated; a worker reports it in a result the coordinator must be able to read)."""
        return Usage(
            calls=min(max(self.calls, 0), MAX_USAGE_COUNT),
            prompt_tokens=min(max(self.prompt_tokens, 0), MAX_USAGE_COUNT),
            completion_tokens=min(max(self.completion_tokens, 0), MAX_USAGE_COUNT),
            cost_usd=0.0 if math.isnan(self.cost_usd) else min(max(self.cost_usd, 0), MAX_COST_USD),
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budget(msgspec.Struct, kw_only=True, frozen=True):
    """Limits of a run; 0 means unlimited. Exceeding one pauses the run for approval."""

    max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    max_attempts_per_task: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$" + AT_THE_END)]
Commit = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}([0-9a-f]{24})?$" + AT_THE_END)]


class SnapshotBundle(msgspec.Struct, kw_only=True, frozen=True):
    """One git bundle in the object store; its ref `BUNDLE_REF` points at `head`."""

    name: str
    sha256: Sha256
    size: int
    head: Commit


class SnapshotRef(msgspec.Struct, kw_only=True, frozen=True):
    """Enough to rebuild commit `head` from nothing: import `bundles` in order (the first is
    full, each later one needs those before it); `head` is in the history of the last one."""

    head: Commit
    bundles: Annotated[tuple[SnapshotBundle, ...], msgspec.Meta(min_length=1)]

    @property
    def root(self) -> SnapshotBundle:
        """The full bundle the chain starts from (a cache keeps one repository per root)."""
        return self.bundles[0]

    @property
    def newest(self) -> SnapshotBundle:
        return self.bundles[-1]

    @property
    def size(self) -> int:
        """Bytes a worker with an empty cache downloads."""
        return sum(bundle.size for bundle in self.bundles)


class RepoRef(msgspec.Struct, kw_only=True, frozen=True):
    """Where the code of a run lives. `path` is the user's repository and `snapshot` the run's
    integration clone, both on the coordinator's disk; `head` is the integration head, and
    `bundles` how a worker on any machine rebuilds it from the `cy_artifacts` object store."""

    path: str = ""
    snapshot: str = ""
    head: str = ""
    bundles: SnapshotRef | None = None


class TaskSpec(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One unit of work in a plan, as the planner writes it.

    Empty fields are left out on the wire (readers take the defaults): a plan travels in one
    `SubmitRun`, and this halves it (a 10,000-task random plan: 1.16 MB -> 0.54 MB)."""

    id: Id
    title: ShortText
    description: LongText = ""
    acceptance: list[LongText] = []
    files: list[str] = []
    deps: list[Id] = []
    reviewers: list[ReviewerName] = []
    # The planner's estimate of the work, used only to order ready tasks (None: not estimated).
    effort: Effort | None = None


class FeedbackKind(enum.StrEnum):
    TEST_FAILURE = "test_failure"
    REVIEW = "review"
    CONFLICT = "conflict"
    REGRESSION = "regression"
    SAFETY = "safety"


class Feedback(msgspec.Struct, kw_only=True, frozen=True):
    """Why an earlier attempt went back to the coder."""

    attempt: Attempt
    kind: FeedbackKind
    text: LongText


class Patch(msgspec.Struct, kw_only=True, frozen=True):
    """A unified diff: inline in a coder's result; in the task's record and the work items made
    from it, a reference into the `cy_artifacts` object store when large (the coordinator stores
    it: `codeyard.workspace.patch_store`)."""

    text: str = ""
    object_name: str = ""
    sha256: str = ""


class GivenAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """A person's answer to an approval, as the run that took it keeps it (`Run.answered`)."""

    status: str  # approved, denied
    by: ShortText = ""
    reason: LongText = ""


class Task(msgspec.Struct, kw_only=True):
    """A task's live state inside a run."""

    spec: TaskSpec
    state: TaskState = TaskState.PLANNED
    attempt: Attempt = 0
    feedback: list[Feedback] = []
    approvals: dict[str, bool] = {}
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Added for the coordinator core; both default, so records written before still decode.
    # The state a task parked in `awaiting_approval` returns to when approved: the state machine
    # must restore it after a coordinator failover, so it has to live in the stored record.
    parked_from: TaskState | None = None
    # True while the work of the current state has not been sent because the run was paused
    # (over budget): it is sent on resume, and a standby must know it was never sent.
    held: bool = False
    # Outputs of the current attempt, which the next role's work item carries.
    patch: Patch | None = None
    test_output: LongText = ""
    summary: LongText = ""  # the coder's account of the change, for the commit message
    tests_run: int = 0
    tests: Patch | None = None  # the tester's tests for the attempt, merged with `patch`
    # Times work was sent for this task (the items of its reviewers counting once); part of
    # each item's msg_id, so a re-send after a failover is deduplicated by JetStream while a
    # deliberate second send is not.
    dispatches: int = 0
    # msg_ids of the latest results of this task's work whose usage the run counted (those
    # applied, retried or too late): one replayed after a failover (stored, not yet acked) is
    # not counted twice. Stored as `charged_retries`, its name when it held `WorkRetried` only.
    charged_reports: list[str] = msgspec.field(default_factory=list, name="charged_retries")


class Run(msgspec.Struct, kw_only=True):
    """A run: the goal, its task graph and where it stands."""

    run_id: Id
    goal: LongText
    repo: RepoRef = RepoRef()
    state: RunState = RunState.PLANNING
    tasks: dict[str, Task] = {}
    budget: Budget = Budget()
    usage: Usage = Usage()
    # Added for the coordinator core (defaulted, so older records still decode). Both come from
    # `SubmitRun` and are needed after submission, possibly by a standby coordinator:
    # reviewers every task needs when its spec names none,
    reviewers: list[ReviewerName] = msgspec.field(default_factory=lambda: ["review"])
    # and whether a person approves the plan before execution starts, and each merge.
    approve_plan: bool = False
    approve_merge: bool = False
    # The run's test command (`SubmitRun.test_command`), which every test request carries and
    # the suite after each merge runs; "" in records of older versions: detected, as then.
    test_command: TestCommand = ""
    error: str = ""
    created_at: datetime = msgspec.field(default_factory=utc_now)
    updated_at: datetime = msgspec.field(default_factory=utc_now)
    # Coordinator bookkeeping: the sequence of the last entry of the run's journal that its
    # stored records include (later entries are applied on load; coordinator/run_store.py).
    journal_seq: int = 0
    # Questions the run asked a person (plan, budget) so far: numbers them, so that a question
    # asked again after a crash keeps its approval id, and an answer to an older one is told
    # from the answer the run waits for.
    questions: int = 0
    # Which loading of the run in a coordinator sent its latest plan request (`OpenRun.epoch`),
    # part of that request's msg_id: a submission cut before its run was stored, submitted
    # again, is planned instead of its request being dropped as a copy of the lost one (whose
    # answer found no run). Empty in records of older versions, whose ids leave it out.
    planning_dispatched_by: str = ""
    # Which submission this is, drawn when the coordinator accepted it: part of the ids of its
    # tasks' work, so a submission cut before its run was stored, submitted again, has its work
    # done instead of dropped as copies of the lost one's (whose answers found no run). Empty in
    # records of older versions, whose ids leave it out (work they sent keeps its id when a
    # newer leader re-sends it).
    submission: str = ""
    # As `Task.charged_reports`, for the planning's work (which has no task).
    charged_reports: list[str] = msgspec.field(default_factory=list, name="charged_retries")
    # The answers the run took, by approval id, stored with the step that took them: the
    # answer's own record in `cy_approvals` is written after, and a step cut between the two
    # left the answer taken but its question pending; the same answer sent again is then told
    # it was taken, and the record is written.
    answered: dict[str, GivenAnswer] = {}
