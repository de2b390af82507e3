"""The coordinator process: leader election, durable runs, dispatch, results and the control API.

One `Coordinator` per process; any number of them may run. The one holding the lease leads,
the others wait. The leader serialises every change (results, control requests, merge
outcomes) through one inbox. Each step applies a batch of inputs to the pure `RunEngine`s and
then makes the outcome durable in one pipelined commit — each changed run's journal entry or
checkpoint (revision-checked; `run_store`), work items to `cy.work.*`, events to `cy.events.*`
— and only then acks the results and answers the requests of that batch. A crash at any
point leaves either the inputs unacked (they come back) or the commit durable (a replayed input
is then `Ignored`). A coder's large patch is stored in `cy_artifacts` before its result is
applied, so that the records and work items carry only its name (`_patch_stored`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.object_store import ObjectStore

from codeyard.bus import subjects
from codeyard.bus.connection import MSG_ID_HEADER, Bus
from codeyard.bus.consumer import PullConsumer, delivery_count
from codeyard.bus.gate_client import BusGateClient, GateClient, GateUnavailable
from codeyard.bus.permissions import INBOX_ROOT
from codeyard.bus.pipeline import MessageTooLarge, Pending, PubAck, PublishError
from codeyard.bus.service_key import ServiceKey
from codeyard.bus.store import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    WRONG_LAST_SEQUENCE,
    StaleRevision,
    VersionedStore,
)
from codeyard.bus.topology import DAY
from codeyard.cancellation import in_background, stop_tasks, wait_event
from codeyard.coordinator.artifact_collector import (
    COLLECT_INTERVAL,
    FIRST_COLLECTION_AFTER,
    ArtifactCollector,
)
from codeyard.coordinator.budget import lift_exceeded
from codeyard.coordinator.effects import (
    CancelWork,
    Dispatch,
    Effect,
    Ignored,
    Integrate,
    Merge,
    RequestApproval,
    RunFinished,
    RunMoved,
    TaskMoved,
)
from codeyard.coordinator.engine import RunEngine
from codeyard.coordinator.events import (
    Cancel,
    CapacityChanged,
    Event,
    Integrated,
    MergeFailed,
    ParkTask,
    PlanApproved,
    PlanProposed,
    PlanRejected,
    ResumeRun,
    ResumeTask,
    StartPlanning,
    UnappliedSpend,
    WorkAbandoned,
)
from codeyard.coordinator.fair_share import fair_shares
from codeyard.coordinator.graph import MAX_TASK_BYTES, InvalidPlan, TaskGraph
from codeyard.coordinator.integrator import Integrator, LedgerIntegrator
from codeyard.coordinator.lease import RELEASE_PATIENCE, LeaderLease
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.coordinator.result_events import (
    event_for,
    misattributed,
    role_of,
    unapplied_spend,
)
from codeyard.coordinator.reviewer_consumers import (
    ReviewerConsumers,
    reviewers_named,
    reviewers_of,
)
from codeyard.coordinator.run_store import CheckpointPolicy, RunStore, StepWrite, StoredRun
from codeyard.coordinator.work_items import (
    CHANGES_BYTES,
    answers_this_submission,
    derived_id,
    run_event,
    task_changes,
    work_cancelled,
    work_item,
)
from codeyard.observability import metrics
from codeyard.observability.consumer_gauges import ConsumerGauges
from codeyard.observability.context import working_on
from codeyard.observability.run_gauges import set_state_gauges
from codeyard.schemas.codec import MAX_MESSAGE_BYTES, MessageError, decode, encode
from codeyard.schemas.envelope import Envelope, new_id
from codeyard.schemas.export import CONTROL_VERBS
from codeyard.schemas.messages import (
    AFTER_EVERY_ID,
    ALREADY_CANCELLED,
    RUN_QUESTIONS,
    SUBMIT_PATIENCE,
    Accepted,
    ActionCheck,
    ApprovalList,
    Approve,
    CancelRun,
    CodeResult,
    CollectArtifacts,
    Control,
    ControlError,
    DeadLetter,
    Deny,
    ListApprovals,
    PendingApproval,
    Result,
    ResultBatch,
    ResultMessage,
    RunEvent,
    RunStateChanged,
    RunStatus,
    StatusQuery,
    SubmitRun,
    TestResult,
    UndecodableWork,
    UsageReported,
    WorkCancelled,
    WorkFailed,
    WorkItem,
    decode_control,
    unknown_run,
)
from codeyard.schemas.model import (
    FeedbackKind,
    GivenAnswer,
    RepoRef,
    Run,
    RunState,
    Task,
    TaskState,
    Usage,
    clip,
)
from codeyard.workspace.git import GitError
from codeyard.workspace.integration import RepositoryNotWritable, RunIdTaken
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, inline, offload

log = logging.getLogger(__name__)

# Metric children looked up once: `labels()` per result showed in the step's profile.
_RESULTS = {
    outcome: metrics.COORDINATOR_RESULTS.labels(outcome)
    for outcome in ("malformed", "refused", "ignored", "early", "applied", "poison", "held")
}
_dispatches = functools.cache(metrics.COORDINATOR_DISPATCHES.labels)


def _tally(outcome: str, counted: bool) -> None:
    if counted:
        _RESULTS[outcome].inc()


# Beside a task's record and its run's header in a journal entry: the entry's other fields,
# its subject and headers.
RECORD_ROOM = 1024


class LostLeadership(RuntimeError):
    pass


# Failures that are not the input's fault: trouble on the bus, a lost lease. They end a step as
# they are, however often they happen, and never set its inputs aside.
NOT_POISON = (LostLeadership, StaleRevision, nats.errors.Error, PublishError, OSError)

# An input of a step, as it comes again: a result by its stream sequence, a run's own event
# (a merge's outcome, sent again after a reload) by its run and value, a submission by its run.
PoisonKey = tuple[str, str | int]


class PoisonedStep(RuntimeError):
    """Applying an input failed in a way no retry would change (a bug, most likely): the step is
    dropped and the runs reloaded, and the input is set aside (a result dead-lettered, an event
    filed as a dead letter, a submission refused) once it has failed a step `POISON_STEPS`
    times, so that it cannot stop the coordinator, nor every one after it, for good."""

    def __init__(self, key: PoisonKey, what: str, error: Exception) -> None:
        super().__init__(f"applying {what} failed: {error!r}")
        self.key = key
        self.error = error


POISON_STEPS = 2
MAX_POISON_REMEMBERED = 1000


class PoisonGuard:
    """`Coordinator._guarded`'s context manager: a class, as the coordinator enters one for
    every result message (a generator-based one cost several times as much)."""

    __slots__ = ("_key", "_what")

    def __init__(self, key: PoisonKey, what: str) -> None:
        self._key = key
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, NOT_POISON):
            raise PoisonedStep(self._key, self._what, exc) from exc


@dataclass
class OpenRun:
    stored: StoredRun
    engine: RunEngine
    # This loading of the run, named in the ids of its plan requests (`Run.planning_dispatched_by`)
    epoch: str = field(default_factory=lambda: new_id()[:12])

    @property
    def run(self) -> Run:
        return self.stored.run


@dataclass(frozen=True)
class ReadAfterStep:
    """A reply read from the store once the step that took its request is done, so that the
    read holds up no run: every run's header (a tenth of a second at a thousand runs, more as
    runs accumulate), an ended run's tasks (a second at 10,000). What the step knows (its open
    runs) is taken in the step, at one moment."""

    read: Callable[[], Awaitable[Envelope]]


@dataclass
class ControlCall:
    request: Control
    reply: asyncio.Future[Envelope | ReadAfterStep]


@dataclass
class FollowUp:
    """An engine event produced by the coordinator itself (a merge or integration outcome)."""

    run_id: str
    event: Event


@dataclass
class Preparation:
    """A submitted run whose workspace is being prepared, outside the steps (a clone and a
    snapshot of a large repository take minutes): it is created, and its submitters answered,
    in the step after `Prepared` comes back."""

    run: Run
    first: Event
    calls: list[ControlCall]
    cancelled: Cancel | None = None  # asked meanwhile: the run is created cancelled


@dataclass
class Prepared:
    """How a preparation ended: where the run's code is, or why it cannot be prepared."""

    run_id: str
    repo: RepoRef | None
    error: str = ""
    field: str = ""  # "$.repo" when the repository is what is wrong, not the moment


@dataclass
class Untold:
    """Events of a run's last step were not stored (`Coordinator._telling`): the session ends,
    and the next one loads the run, whose last entry holds them, and publishes them again."""

    error: BaseException


Input = Msg | ControlCall | FollowUp | Prepared | Untold


@dataclass
class Commit:
    """What one step must make durable before its inputs are acked or answered."""

    dirty: dict[str, set[str]] = field(default_factory=dict)
    work: list[tuple[str, WorkItem]] = field(default_factory=list)  # sent first (see _flush)
    events: list[RunEvent] = field(default_factory=list)  # on the runs' `cy.events.<run_id>`
    moves: dict[str, list[TaskMoved]] = field(default_factory=dict)
    questions: list[PendingApproval] = field(default_factory=list)  # new: created, never replaced
    # by approval id: the answer, and the revision of the question it replaces
    answers: dict[str, tuple[PendingApproval, int]] = field(default_factory=dict)
    merges: list[tuple[str, Merge | Integrate]] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    cancellations: list[WorkCancelled] = field(default_factory=list)
    acks: list[Msg] = field(default_factory=list)
    # Handed back, to come again in a moment (see `_flush`): results early for their run, and
    # results whose large patch could not be stored yet.
    again: list[Msg] = field(default_factory=list)
    replies: list[tuple[ControlCall, Envelope | ReadAfterStep]] = field(default_factory=list)


@dataclass
class CoordinatorStats:
    steps: int = 0
    results: int = 0
    ignored: int = 0
    dispatched: int = 0


class Coordinator:
    def __init__(
        self,
        bus: Bus,
        *,
        name: str | None = None,
        capacity: int = 8,
        integrator: Integrator | None = None,
        gate: GateClient | None = None,
        approval_timeout: float = DAY,
        artifacts: ObjectStore | None = None,
        batch_size: int = 512,
        metrics_interval: float = 5.0,
        artifact_retention: float = 30 * DAY,
        collect_every: float = COLLECT_INTERVAL,
        first_collection_after: float = FIRST_COLLECTION_AFTER,
        integration_clones: Path | None = None,
        early_deliveries: int | None = None,
        service_key: ServiceKey | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        """`capacity`: tasks of one run in flight at once; `max_in_flight`: of all runs
        together, shared out among them (`fair_share`); None: no cap but each run's.
        `integration_clones`: where the integrator keeps a clone per run
        (`GitIntegrator.root`), for garbage collection to remove those of ended runs.
        `early_deliveries`: how often an early answer comes before it is dropped (default:
        `early_patience` of the bus's ack_wait). With a `service_key`, work items carry a
        proof, answers without theirs are refused, and answered approvals are sealed (see
        `codeyard.bus.service_key`)."""
        self.service_key = service_key
        self.bus = bus
        self.gate = gate or BusGateClient(bus)
        # Where this coordinator stores the coders' large patches, and reads them back for the
        # gate to see them whole.
        self.artifacts = artifacts
        self.approval_timeout = approval_timeout
        self.name = name or f"coordinator-{new_id()[:8]}"
        self.capacity = capacity
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.integrator = integrator or LedgerIntegrator()
        self.batch_size = batch_size
        self.early_deliveries = early_deliveries or early_patience(bus.topology.ack_wait)
        self.metrics_interval = metrics_interval  # seconds between reads of the gauges
        self.stats = CoordinatorStats()
        self.leading = asyncio.Event()
        self._open: dict[str, OpenRun] = {}
        self._inbox: asyncio.Queue[Input] = asyncio.Queue()
        self._store: RunStore | None = None
        self._approvals: VersionedStore[PendingApproval] | None = None
        self._lease: LeaderLease | None = None
        self._pipeline = bus.pipeline
        self._unacked = 0  # results delivered to the inbox and not yet acked
        self._acked = asyncio.Event()
        # By run: events of its last steps, published, maybe not stored yet (`_flush`).
        self._telling: dict[str, list[tuple[bytes, Pending]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Workspace work (preparations, merges) running in the background, stopped when the
        # leadership ends (see `_lead`).
        self._merging: set[asyncio.Task[None]] = set()
        # The merges in flight by run: stopped when their run ends (cancelled, failed), so that
        # no commit the run's record says was never merged stays on its clone (which a failed
        # run's salvage fetches) and no suite runs on for a run nobody waits for.
        self._merges_of: dict[str, set[asyncio.Task[None]]] = {}
        self._preparing: dict[str, Preparation] = {}
        self._answering: set[asyncio.Task[None]] = set()  # submissions waiting for their reply
        # Inputs whose step failed (`PoisonedStep`): how often, and the error.
        self._poison: dict[PoisonKey, tuple[int, str]] = {}
        # Garbage collection of the artifacts store, while leading (see artifact_collector).
        self.collector = (
            ArtifactCollector(
                artifacts,
                bus.js,
                open_runs=lambda: [open_run.run for open_run in self._open.values()],
                leading=self.leading.is_set,
                retention=artifact_retention,
                clones=integration_clones,
                recorded_runs=self._recorded_runs,
            )
            if artifacts is not None
            else None
        )
        self.collect_every = collect_every
        self.first_collection_after = first_collection_after
        # The plugin reviewers' consumers, which their workers may not create (see the module)
        self.reviewer_consumers = ReviewerConsumers(bus.js, bus.topology)

    # --- leadership ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by until the lease is free, lead until it is lost, repeat until `stop`."""
        self._lease = await LeaderLease.open(self.bus.js, self.name, self.service_key)
        # A journal entry must fit in one message of this server, whatever it takes.
        room = self._pipeline.max_payload - 4096
        policy = CheckpointPolicy(max_entry_bytes=min(CheckpointPolicy.max_entry_bytes, room))
        self._store = await RunStore.open(self.bus.js, policy)
        self._approvals = await self.bus.store(subjects.APPROVALS_BUCKET, PendingApproval)
        lease = self._lease
        try:
            while not stop.is_set():
                # While NATS is away every request would wait out its timeout, and a stop too.
                if self.bus.connected and (lease.held() or await self._try_acquire(lease)):
                    await self._lead(lease, stop)
                else:
                    await wait_event(stop, lease.renew_interval)
        finally:
            await self.reviewer_consumers.close()
            # Not even trying while NATS is known to be away: nothing would answer.
            await lease.release(RELEASE_PATIENCE if self.bus.connected else 0.0)

    async def _try_acquire(self, lease: LeaderLease) -> bool:
        try:
            return await lease.acquire()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("%s: cannot reach the lease: %s", self.name, exc)
            return False

    async def _lead(self, lease: LeaderLease, stop: asyncio.Event) -> None:
        """One leadership session: load every open run, resend outstanding work, then serve
        until stopped, the lease is lost or a commit fails (then reload from the store). Its
        merges still running end with it (whatever git work they are in finishes first)."""
        log.info("%s leads", self.name)
        lost = asyncio.Event()
        session: list[asyncio.Task[object]] = []
        subscriptions: list[Subscription] = []
        self._inbox = asyncio.Queue()
        self._unacked = 0
        self._telling = {}
        try:
            await self._load_runs()
            subscriptions = await self._serve_control(lost)
            self.leading.set()
            metrics.COORDINATOR_LEADING.set(1)
            session = [
                asyncio.create_task(self._keep_lease(lease, lost), name="keep lease"),
                asyncio.create_task(self._fetch_results(lost), name="fetch results"),
                asyncio.create_task(self._process_inbox(), name="process inbox"),
                asyncio.create_task(self._expire_approvals(), name="expire approvals"),
                asyncio.create_task(self._observe(), name="observe"),
                *self._collection(),
                asyncio.create_task(stop.wait()),
                asyncio.create_task(lost.wait()),
            ]
            done, _ = await asyncio.wait(session, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except (LostLeadership, StaleRevision) as exc:
            log.warning("%s: stepping down: %s", self.name, exc)
        except PoisonedStep as exc:
            log.error("%s: %s; reloading runs", self.name, exc, exc_info=exc.error)
            self._remember_poison(exc)
            await wait_event(stop, 0.5)
        except (nats.errors.Error, PublishError, TimeoutError, OSError) as exc:
            log.warning("%s: bus trouble, reloading runs: %s", self.name, exc)
            await wait_event(stop, 0.5)
        finally:
            lost.set()  # ends the session's loops even if one missed its cancellation
            self.leading.clear()
            metrics.COORDINATOR_LEADING.set(0)
            await stop_tasks(session)
            # results fetched and not yet in a step: to the next session at once, too
            await _hand_back(item for item in _drained(self._inbox) if isinstance(item, Msg))
            # A deposed leader must not go on merging: its successor merges the same tasks
            # again, and the outcome of this one could no longer be recorded anyway.
            await stop_tasks(self._merging)
            self._merges_of.clear()
            # Those not answered are told to send their requests again (`_reply_when_done`);
            # submitters too, and the next leader prepares their runs. So are those still
            # queued in the subscriptions: unsubscribing would drop them unanswered, and their
            # clients would wait out their timeout.
            await _stop_serving(subscriptions, RETRY_TELLING if self.bus.connected else 0.0)
            if self._answering:
                await asyncio.wait(self._answering, timeout=RETRY_TELLING)
            await stop_tasks(self._answering)
            self._preparing.clear()
            self._open.clear()

    def _remember_poison(self, poisoned: PoisonedStep) -> None:
        failures, _ = self._poison.pop(poisoned.key, (0, ""))
        self._poison[poisoned.key] = (failures + 1, repr(poisoned.error))
        while len(self._poison) > MAX_POISON_REMEMBERED:  # the oldest first
            del self._poison[next(iter(self._poison))]

    async def _keep_lease(self, lease: LeaderLease, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(lease.renew_interval)
            try:
                renewed = await lease.renew()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("%s: lease renewal failed: %s", self.name, exc)
                renewed = lease.held()
            if not renewed:
                lost.set()
                return

    def _collection(self) -> list[asyncio.Task[None]]:
        """Periodic garbage collection in the background: it never holds up a step, and its
        failures are logged, never the end of a leadership."""
        if self.collector is None:
            return []
        periodic = self.collector.collect_periodically(
            self.first_collection_after, self.collect_every
        )
        return [asyncio.create_task(periodic)]

    async def _observe(self) -> None:
        """While leading: tasks and runs by state, and the consumers' queues, as gauges. Read
        on the event loop (the runs change under it) every `metrics_interval` seconds rather
        than each step, which must stay cheap. A plugin reviewer's consumer the listing lacks
        though an open run needs it (deleted by hand) is created again."""
        consumers = ConsumerGauges(self.bus.js)
        try:
            while True:
                try:
                    set_state_gauges(open_run.run for open_run in self._open.values())
                    since = asyncio.get_running_loop().time()
                    if (listed := await consumers.poll()) is not None:
                        needed = self._reviewers_needed()
                        self.reviewer_consumers.recreate_missing(listed, since, needed)
                except Exception:  # metrics must never end a leadership
                    log.exception("%s: reading the gauges failed", self.name)
                await asyncio.sleep(self.metrics_interval)
        finally:
            consumers.clear()  # no longer leading: the next leader reports them
            set_state_gauges(())

    def _reviewers_needed(self) -> set[str]:
        """The reviewers the open runs name (their default ones and their tasks')."""
        return set[str]().union(*(reviewers_of(open_run.run) for open_run in self._open.values()))

    # --- loading ------------------------------------------------------------------------------

    async def _load_runs(self) -> None:
        assert self._store is not None
        commit = Commit()
        reviewers: set[str] = set()
        for header in await self._store.headers():
            if header.state in TERMINAL_RUN_STATES:
                continue
            try:
                stored = await self._store.load(header.run_id, tasks=True)
                if stored is None:
                    continue
                engine = RunEngine(stored.run, capacity=self._capacity_of_a_new_run())
            except (InvalidPlan, MessageError) as exc:
                # one run's bad record must not stop every coordinator from leading the rest
                log.error("run %s is unreadable, skipping it: %s", header.run_id, exc)
                continue
            open_run = OpenRun(stored, engine)
            self._open[stored.run.run_id] = open_run
            commit.events += _decoded_events(stored)
            await self._record_taken_answers(stored.run, commit)
            if stored.run.state in TERMINAL_RUN_STATES:
                # It ended in a step whose header a crash cut off: write it and close the run.
                commit.dirty.setdefault(stored.run.run_id, set())
                commit.finished.add(stored.run.run_id)
                continue
            reviewers |= reviewers_of(stored.run)
            # The previous leader may or may not have sent these; ids make re-sends harmless.
            self._execute(open_run, engine.outstanding_work(), commit, resend=True)
        # Not waited for: the lease is not renewed until the runs are loaded. The work sent
        # again waits in the stream until its consumer exists, a round trip from now.
        self.reviewer_consumers.want(reviewers)
        await self._flush(commit)
        log.info("%s resumed %d open runs", self.name, len(self._open))

    async def _record_taken_answers(self, run: Run, commit: Commit) -> None:
        """Write the answers `run` took whose records a step cut short left pending (see
        `Run.answered`): the question would be listed, and expire, though it was answered."""
        assert self._approvals is not None
        for approval_id, taken in run.answered.items():
            entry = await self._approvals.get(approval_id)
            if entry is not None and entry.value.status == "pending":
                commit.answers[approval_id] = (_answered_as(entry.value, taken), entry.revision)

    # --- inputs -------------------------------------------------------------------------------

    async def _fetch_results(self, lost: asyncio.Event) -> None:
        """Keep results flowing into the inbox, at most `2 * batch_size` unacked at a time."""
        window = 2 * self.batch_size
        consumer = PullConsumer(
            self.bus.nc,
            subjects.RESULT_STREAM,
            subjects.COORDINATOR_CONSUMER,
            self._deliver_result,
            expires=5.0,
        )
        # woken to ask again as results are acked, and as the consumer may be asked again (a
        # request ended, a refusal's pause is over, a reconnect forgot every request)
        consumer.on_ask_again = self._acked.set
        await consumer.start()
        self.bus.reconnected.append(consumer.forget_all)
        try:
            while not lost.is_set():
                self._acked.clear()
                consumer.forget_expired()
                missing = window - self._unacked - consumer.outstanding
                if missing >= self.batch_size // 4 or consumer.outstanding == 0:
                    await consumer.request(missing)
                await wait_event(self._acked, 1.0)
        finally:
            await consumer.stop()
            self.bus.reconnected.remove(consumer.forget_all)

    def _deliver_result(self, msg: Msg) -> None:
        self._unacked += 1
        self._inbox.put_nowait(msg)

    async def _serve_control(self, ended: asyncio.Event) -> list[Subscription]:
        """Serve the control API for one leadership session, which `ended` says is over."""

        async def answer(msg: Msg) -> None:
            if not msg.reply.startswith(f"{INBOX_ROOT}."):
                # JetStream publishes for a client to whatever subject it names (a direct
                # get's answer, a consumer's delivery), whatever the client may publish: a
                # worker could replay stored bytes here as an approval. Those never come
                # with an inbox to answer; a person's request always does.
                log.warning(
                    "refusing a request on %s that names no inbox to answer (reply %r)",
                    msg.subject,
                    clip(msg.reply, 200),
                )
                return
            try:
                request = decode_control(msg.data)
            except MessageError as exc:
                await self._respond(msg, ControlError(error=str(exc), field=exc.field))
                return
            verb = msg.subject.rpartition(".")[2]
            expected = CONTROL_VERBS[verb][0]
            if not isinstance(request, expected):  # a gc sent as a status, say
                error = f"{msg.subject} takes a {expected.__name__}, not a {type(request).__name__}"
                await self._respond(msg, ControlError(error=error, field="$.type"))
                return
            if isinstance(request, CollectArtifacts):  # outside the inbox: steps never wait
                await self._respond(msg, await self._collect_now(request))
                return
            call = ControlCall(request, asyncio.get_running_loop().create_future())
            self._inbox.put_nowait(call)
            # Answered from a task of its own: nats-py calls `answer` for one message of a
            # subject at a time, so waiting here would give each request a step of its own (a
            # submission may even wait minutes for its repository).
            patience = SUBMIT_PATIENCE if isinstance(request, SubmitRun) else 30
            in_background(self._answering, self._reply_when_done(msg, call, patience, ended))

        return [
            await self.bus.nc.subscribe(subjects.ctl_subject(verb), cb=answer)
            for verb in CONTROL_VERBS  # the verbs the exported AsyncAPI document lists
        ]

    async def _reply_when_done(
        self, msg: Msg, call: ControlCall, patience: float, ended: asyncio.Event
    ) -> None:
        """Send `call`'s reply once its step is done. If the leadership session ends first
        (its step failed, the lease was lost, the coordinator stops), the request was not
        done: the client is told to send it again (`retry`), to whichever coordinator leads
        next, rather than left to wait out its timeout."""
        over = asyncio.ensure_future(ended.wait())
        waiting: list[asyncio.Future[Any]] = [call.reply, over]
        try:
            await asyncio.wait(waiting, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if call.reply.done():
            reply = await _read_if_after_step(call.reply.result())
        elif ended.is_set():
            error = "the coordinator stopped leading before it answered; send it again"
            reply = ControlError(error=error, retry=True)
        else:
            reply = ControlError(error="the coordinator did not finish in time; retry")
        await self._respond(msg, reply)

    def _reply_limit(self) -> tuple[int, str]:
        """The most bytes a reply may have, and whose limit that is: the server's max_payload,
        or what clients decode (`MAX_MESSAGE_BYTES`) if that is less."""
        max_payload = self.bus.nc.max_payload
        if max_payload and max_payload <= MAX_MESSAGE_BYTES:
            return max_payload, f"the server's {max_payload}-byte message limit"
        return MAX_MESSAGE_BYTES, f"the {MAX_MESSAGE_BYTES}-byte limit of a codeyard message"

    async def _respond(self, msg: Msg, reply: Envelope) -> None:
        """Answer `msg`, with an error saying so when the reply is too big to send: nats-py
        would raise instead of sending it (or a client refuse to decode it), and the client
        would hear nothing at all."""
        if not msg.reply:  # published, not requested: nobody to answer
            return
        payload = encode(reply)
        limit, which = self._reply_limit()
        if len(payload) > limit:
            error = f"{_what(reply)} is {len(payload)} bytes, over {which}"
            log.warning("control reply not sent: %s", error)
            payload = encode(ControlError(run_id=reply.run_id, error=error))
        await msg.respond(payload)

    async def _collect_now(self, request: CollectArtifacts) -> Envelope:
        if self.collector is None:
            return ControlError(error="this coordinator has no artifacts store to collect")
        try:
            return await self.collector.collect(dry_run=request.dry_run)
        except Exception as exc:
            log.exception("garbage collection asked by a client failed")
            return ControlError(error=f"garbage collection failed: {type(exc).__name__}: {exc}")

    async def _recorded_runs(self) -> list[Run]:
        assert self._store is not None
        return await self._store.headers()

    async def _process_inbox(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            started = time.monotonic()
            while len(batch) < self.batch_size and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            try:
                for item in batch:
                    if isinstance(item, Untold):
                        raise item.error
                await self._step(batch)
            except BaseException:
                # Its results come again at once, to the next session, rather than after
                # ack_wait: a step that failed before its journal entry was stored made the
                # work they answer outstanding again, and the copies sent are dropped.
                await _hand_back(item for item in batch if isinstance(item, Msg))
                raise
            self.stats.steps += 1
            metrics.COORDINATOR_STEP_SECONDS.observe(time.monotonic() - started)

    async def _step(self, batch: list[Input]) -> None:
        commit = Commit()
        now = datetime.now(UTC)
        # (shares that shrank since the last step hold back what the inputs would start)
        self._share_in_flight(commit, now)
        for item in batch:
            if isinstance(item, Msg):
                await self._on_result_message_guarded(item, commit, now)
            elif isinstance(item, FollowUp):
                if open_run := self._open.get(item.run_id):
                    self._on_own_event(open_run, item.event, commit, now)
            elif isinstance(item, Prepared):
                await self._on_prepared_guarded(item, commit, now)
            elif isinstance(item, ControlCall):
                reply = await self._on_control(item, commit, now)
                if reply is not None:  # else answered once its repository is prepared
                    commit.replies.append((item, reply))
        while inline := [m for m in commit.merges if self._inline(m[0])]:
            commit.merges = [m for m in commit.merges if m not in inline]
            for run_id, work in inline:
                open_run = self._open[run_id]
                key: PoisonKey = ("merge", _event_key(run_id, work))
                if error := self._poisoned(key):
                    self._file_dead_letter("", repr(work).encode(), error, commit, run_id)
                    continue
                with self._guarded(key, f"{work!r} of run {run_id}"):
                    self._apply(open_run, await self._outcome(open_run, work), commit, now)
        self._share_in_flight(commit, now)  # what the inputs freed, or a run that ended
        await self._flush(commit)

    def _share_in_flight(self, commit: Commit, now: datetime) -> None:
        """Give each executing run its share of `max_in_flight` as its capacity. A run whose
        share grew starts ready tasks now; one whose share shrank starts none until its work
        in flight drops below it. A capacity is not stored: it is set again at every step."""
        if self.max_in_flight is None:
            return
        executing = {
            run_id: open_run
            for run_id, open_run in self._open.items()
            if open_run.run.state is RunState.EXECUTING
        }
        wants = {run_id: open_run.engine.wants for run_id, open_run in executing.items()}
        for run_id, share in fair_shares(wants, self.max_in_flight, self.capacity).items():
            open_run = executing[run_id]
            if share == open_run.engine.capacity:
                continue
            effects = open_run.engine.handle(CapacityChanged(share), now)
            if changed := open_run.engine.take_changed_tasks():  # ready tasks it started
                commit.dirty.setdefault(run_id, set()).update(changed)
                self._execute(open_run, effects, commit)

    def _capacity_of_a_new_run(self) -> int:
        """A run created or loaded now: its share beside the runs open (which get theirs at
        the next step)."""
        if self.max_in_flight is None:
            return self.capacity
        wants = {run_id: open_run.engine.wants for run_id, open_run in self._open.items()}
        newcomer = "\x00new"  # (no run id has a NUL)
        wants[newcomer] = self.capacity
        return fair_shares(wants, self.max_in_flight, self.capacity)[newcomer]

    def _inline(self, run_id: str) -> bool:
        open_run = self._open.get(run_id)
        return open_run is not None and not self._gated(open_run.run)

    def _gated(self, run: Run) -> bool:
        """Whether merges of `run` ask the safety gate: when they write to a repository, or
        when the run asks a person to approve each merge. (An inline integrator records merges
        in the run only; nothing leaves the coordinator, so there is nothing to guard.)"""
        return run.approve_merge or not self.integrator.inline(run)

    def _poisoned(self, key: PoisonKey) -> str:
        """Why an input is set aside now: its steps failed `POISON_STEPS` times; or "" (go on
        applying it). A result, an event or a submission set aside is gone, and forgotten; a
        request stays refused (until this coordinator restarts): a client, or the expiry of
        approvals, may send the same again, and each failure would reload every run."""
        failures, error = self._poison.get(key, (0, ""))
        if failures < POISON_STEPS:
            return ""
        if key[0] != "control":
            del self._poison[key]
        log.error("setting aside %s: applying it failed %d times: %s", key, failures, error)
        return f"applying it failed {failures} times: {error}"

    def _guarded(self, key: PoisonKey, what: str) -> PoisonGuard:
        """Turn a failure no retry would change into `PoisonedStep` (trouble on the bus and a
        lost lease are not the input's fault: they end the step as they are)."""
        return PoisonGuard(key, what)

    async def _on_result_message_guarded(self, msg: Msg, commit: Commit, now: datetime) -> None:
        key: PoisonKey = ("result", msg.metadata.sequence.stream)
        if error := self._poisoned(key):
            self._dead_letter(msg, error, commit)
            _RESULTS["poison"].inc()
            return
        with self._guarded(key, f"a result on {msg.subject}"):
            await self._on_result_message(msg, commit, now)

    def _on_own_event(self, open_run: OpenRun, event: Event, commit: Commit, now: datetime) -> None:
        """Apply an event of the coordinator's own (a merge's outcome): set aside as a dead
        letter if it keeps failing. Its task then waits for a person, as for a result set aside."""
        run_id = open_run.run.run_id
        key: PoisonKey = ("event", _event_key(run_id, event))
        if error := self._poisoned(key):
            self._file_dead_letter("", repr(event).encode(), error, commit, run_id)
            return
        with self._guarded(key, f"{event!r} to run {run_id}"):
            self._apply(open_run, event, commit, now)

    async def _on_prepared_guarded(self, prepared: Prepared, commit: Commit, now: datetime) -> None:
        """Create the prepared run; refuse its submission if that keeps failing."""
        key: PoisonKey = ("submission", prepared.run_id)
        if error := self._poisoned(key):
            if preparation := self._preparing.pop(prepared.run_id, None):
                refused = ControlError(
                    run_id=prepared.run_id, error=f"creating run {prepared.run_id} failed: {error}"
                )
                commit.replies += [(call, refused) for call in preparation.calls]
            return
        with self._guarded(key, f"the submission of run {prepared.run_id}"):
            await self._on_prepared(prepared, commit, now)

    def _file_undecodable_work(self, work: UndecodableWork, role: str, commit: Commit) -> None:
        """File work `role`'s worker could not decode as a dead letter (workers may not write
        events). The subject and consumer are its role's, the run one open here or none, and
        the event's id is derived from the report's, so that it can never be another event's
        and have that one dropped as a copy."""
        commit.events.append(
            DeadLetter(
                run_id=work.run_id if work.run_id in self._open else "",
                msg_id=derived_id("undecodable", role, work.msg_id),
                subject=subjects.work_subject(role),
                consumer=subjects.consumer_name(role),
                error=work.error,
                payload=work.payload[:4096],
                payload_bytes=max(work.payload_bytes, 0),
            )
        )

    def _dead_letter(self, msg: Msg, error: str, commit: Commit) -> None:
        """Ack `msg` with the step, and file it on the events stream for a person to see."""
        commit.acks.append(msg)
        self._file_dead_letter(msg.subject, bytes(msg.data), error, commit)

    def _file_dead_letter(
        self, subject: str, payload: bytes, error: str, commit: Commit, run_id: str = ""
    ) -> None:
        """File what was set aside on the events stream for a person to see: a result by the
        subject it came on (among the unrouted ones: it may name no run, or a wrong one), an
        event of the coordinator's own among its run's events."""
        letter = DeadLetter(
            run_id=run_id,
            subject=subject,
            consumer=subjects.COORDINATOR_CONSUMER,
            error=clip(error),
            payload=payload[:4096].decode("utf-8", errors="replace"),
            payload_bytes=len(payload),
        )
        commit.events.append(letter)

    async def _on_result_message(self, msg: Msg, commit: Commit, now: datetime) -> None:
        role = subjects.role_of_result_subject(msg.subject)
        results: Sequence[Result | _Unreadable]
        try:
            message: ResultMessage = decode(msg.data, ResultMessage)
        except MessageError as exc:
            if (parts := _batch_parts(msg.data)) is None:
                self._refuse_unreadable(msg.subject, bytes(msg.data), exc, commit, now)
                commit.acks.append(msg)
                return
            # One result a batch cannot carry (of a newer worker, say) must not take the
            # others, whose work was acked, down with it: each is taken or refused alone, in
            # the batch's order.
            results = [_read_part(part) for part in parts]
        else:
            if isinstance(message, UndecodableWork):
                commit.acks.append(msg)
                self._file_undecodable_work(message, role, commit)
                return
            results = message.results if isinstance(message, ResultBatch) else (message,)
        commit.acks.append(msg)
        early: list[Result] = []
        for result in results:
            if isinstance(result, _Unreadable):
                self._refuse_unreadable(msg.subject, result.payload, result.error, commit, now)
                continue
            if not self._proven(result, role):
                self._refuse_unproven(msg.subject, encode(result), commit)
                continue
            if wrong := misattributed(result, role):
                log.warning("refusing a result on %s: %s", msg.subject, wrong)
                _RESULTS["refused"].inc()
                # (it fails only work of `role` out for that task: no other stage's)
                refused = refused_answer(result, role, f"its answer was refused: {wrong}")
                self._on_result(refused, commit, now, counted=False)
                continue
            try:
                result = await self._patch_stored(result)
            except (nats.errors.Error, OSError) as exc:
                # The store is away, not the result at fault: the message comes again (what of
                # it was applied now is then a duplicate), and the other runs go on meanwhile.
                log.warning(
                    "run %s task %s: cannot store its patch in the artifacts store, the result "
                    "comes again: %s: %s",
                    result.run_id,
                    result.task_id,
                    type(exc).__name__,
                    exc,
                )
                commit.acks.remove(msg)
                commit.again.append(msg)
                _RESULTS["held"].inc()
                return
            if self._on_result(result, commit, now):
                early.append(result)
        if not early:
            return
        if delivery_count(msg) < self.early_deliveries:
            # The whole message comes again; what of it was applied now is then a duplicate.
            commit.acks.remove(msg)
            commit.again.append(msg)
            return
        for result in early:
            log.error(
                "dropping %s of task %s attempt %s of run %s: still ahead of its run after %d "
                "deliveries",
                type(result).__name__,
                result.task_id,
                result.attempt,
                result.run_id,
                self.early_deliveries,
            )
            if result.usage.calls and (open_run := self._open.get(result.run_id)):
                self._apply(open_run, unapplied_spend(result), commit, now, result)

    async def _patch_stored(self, result: Result) -> Result:
        """`result` as its run keeps it: a coder's patch over `INLINE_PATCH_CHARS` stored in
        the artifacts store (coders cannot write there) and named by reference. One named so
        already (an older coder's) stays as it is, and so does any patch when this coordinator
        has no store (`_too_big_to_keep` then judges it)."""
        if (
            not isinstance(result, CodeResult)
            or len(result.patch.text) <= INLINE_PATCH_CHARS
            or self.artifacts is None
            or result.run_id not in self._open  # ignored anyway: nothing to store for
        ):
            return result
        assert self.collector is not None  # (made with the store)
        # No deletion between the collector's last look at its age and its delete: the same
        # text stored long ago is reused here, and its reference recorded in this step.
        async with self.collector.deleting:
            patch = await offload(self.artifacts, result.patch)
        return msgspec.structs.replace(result, patch=patch)

    def _refuse_unreadable(
        self, subject: str, payload: bytes, exc: MessageError, commit: Commit, now: datetime
    ) -> None:
        """Set aside an answer that cannot be read, and fail the work it answers, saying why,
        when it still says which it is (a reviewer of another language, say): acked, that work
        would otherwise wait for ever."""
        log.warning("refusing an answer on %s that cannot be read: %s", subject, exc)
        self._file_dead_letter(subject, payload, str(exc), commit)  # a MessageError's is bounded
        _RESULTS["malformed"].inc()
        role = subjects.role_of_result_subject(subject)
        if (addressed := _addressed(payload)) is not None and self._proven(addressed, role):
            reason = f"its answer could not be read: {exc}"
            self._on_result(refused_answer(addressed, role, reason), commit, now, counted=False)

    def _proven(self, answer: Result | _Addressed, role: str) -> bool:
        """Whether `answer`, published on `role`'s subject, carries the proof of the work it
        claims to answer (always, for a coordinator without a key)."""
        return self.service_key is None or self.service_key.proves(
            answer.proof, role, answer.run_id, answer.trace_id, answer.task_id, answer.attempt
        )

    def _refuse_unproven(self, subject: str, payload: bytes, commit: Commit) -> None:
        """Set aside an answer to work its sender was not given (or of a worker too old to
        copy the proof): it changes nothing, and the work's real answer is still to come."""
        error = (
            "its proof is not that of the work it claims to answer: forged, or its worker does "
            "not copy the work item's proof (older than the coordinators?)"
        )
        log.warning("refusing an answer on %s: %s", subject, error)
        self._file_dead_letter(subject, payload, error, commit)
        _RESULTS["refused"].inc()

    def _on_result(
        self, result: Result, commit: Commit, now: datetime, counted: bool = True
    ) -> bool:
        """Apply `result`; whether it is early (see `Ignored.early`). Not `counted` in the
        results metric: an answer made here for a result refused, which counted as such."""
        self.stats.results += 1
        open_run = self._open.get(result.run_id)
        if open_run is None:
            self.stats.ignored += 1
            _tally("ignored", counted)
            log.debug("result for run %s, which is not open", result.run_id)
            return False
        if not answers_this_submission(open_run.run, result.trace_id):
            # A late answer to a submission of the same run id cut before its run was stored,
            # maybe with another goal or plan: not applied, but what it spent is counted.
            log.warning("ignored a result for run %s: it answers another submission", result.run_id)
            self.stats.ignored += 1
            _tally("ignored", counted)
            if result.usage.calls:
                self._apply(open_run, unapplied_spend(result), commit, now, result)
            return False
        event = event_for(result)
        if reason := self._too_big_to_keep(open_run.run, result):
            log.warning("run %s task %s: %s", result.run_id, result.task_id, reason)
            role = role_of(result)
            event = WorkAbandoned(
                result.task_id, result.attempt, role, reason, result.usage, result.msg_id
            )
        with working_on(result.run_id, result.task_id, result.attempt):
            effects = self._apply(open_run, event, commit, now, result)
        early = _early(effects)
        _tally("early" if early else "ignored" if _ignored(effects) else "applied", counted)
        return early

    def _too_big_to_keep(self, run: Run, result: Result) -> str:
        """Why `result`'s output cannot be kept in its task's record, or "": the record, stored
        in one message, would pass the server's limit though the result and the next role's
        work item each fit (the record holds the spec, feedback and outputs together). Stored
        anyway, the step would fail at every replay of the result. Only a result with a large
        output is measured: a smaller one cannot fill a record. A large patch stored by
        `_patch_stored` is measured as the reference the record keeps."""
        task = run.tasks.get(result.task_id)
        limit = self._pipeline.max_payload
        # (on a server taking small messages, a task's spec alone may nearly fill one)
        small = _output_chars(result) < limit // 8 and limit >= 8 * MAX_TASK_BYTES
        if task is None or small or not isinstance(result, CodeResult | TestResult):
            return ""
        kept = msgspec.structs.replace(task)
        _keep_output(kept, result)
        header = msgspec.structs.replace(run, tasks={})
        size = len(encode(kept)) + len(encode(header)) + RECORD_ROOM
        if size <= limit:
            return ""
        why = (
            f"its {type(result).__name__} would make the task's record about {size} bytes, over "
            f"the server's {limit}-byte message limit"
        )
        if isinstance(result, CodeResult) and len(result.patch.text) > INLINE_PATCH_CHARS:
            # (with a store it would be a reference by now: see `_patch_stored`)
            why += " (a patch this large is kept in the object store, which this coordinator lacks)"
        return why

    # --- applying -----------------------------------------------------------------------------

    def _apply(
        self,
        open_run: OpenRun,
        event: Event,
        commit: Commit,
        now: datetime,
        result: Result | None = None,
    ) -> list[Effect]:
        effects = open_run.engine.handle(event, now)
        if _ignored(effects):
            self.stats.ignored += 1
            log.debug("ignored %s: %s", event, effects[0].reason)  # type: ignore[union-attr]
            if _early(effects):
                return effects  # applied later: its usage with it
            if result is not None and result.usage.calls and not isinstance(event, UnappliedSpend):
                # too late to apply (a sibling reviewer sent the task back first, say), but
                # what it spent is spent: counted once
                self._apply(open_run, unapplied_spend(result), commit, now, result)
            return effects
        if result is not None:
            # (not the output of a late result, nor one too big to keep)
            if not isinstance(event, UnappliedSpend | WorkAbandoned):
                # before the next role's work item is built
                _keep_output(open_run.run.tasks.get(result.task_id), result)
            if spent := _usage_of(result):
                commit.events.append(spent)
        dirty = commit.dirty.setdefault(open_run.run.run_id, set())
        dirty.update(open_run.engine.take_changed_tasks())
        self._execute(open_run, effects, commit)
        return effects

    def _execute(
        self, open_run: OpenRun, effects: list[Effect], commit: Commit, *, resend: bool = False
    ) -> None:
        run = open_run.run
        run_id = run.run_id
        dirty = commit.dirty.setdefault(run_id, set())
        counted: set[str] = set()
        for effect in effects:
            match effect:
                case Dispatch():
                    # Once per task for all its reviewers' items (they differ by role): sent
                    # again after a reload, without counting, each keeps its id.
                    if not resend and effect.task_id and effect.task_id not in counted:
                        counted.add(effect.task_id)
                        run.tasks[effect.task_id].dispatches += 1
                        dirty.add(effect.task_id)
                    elif not resend:
                        run.planning_dispatched_by = open_run.epoch
                    item = work_item(run, effect, self.service_key)
                    if effect.role not in subjects.BUILTIN_ROLES:  # one a planner's plan named
                        self.reviewer_consumers.want((effect.role,))
                    commit.work.append((subjects.work_subject(effect.role), item))
                    self.stats.dispatched += 1
                    _dispatches(effect.role).inc()
                case Merge() | Integrate():
                    commit.merges.append((run_id, effect))
                case TaskMoved():
                    dirty.add(effect.task_id)
                    commit.moves.setdefault(run_id, []).append(effect)
                case RunMoved():
                    commit.events.append(run_event(run, effect))
                case RequestApproval():
                    # The submission is part of the id: a run id submitted again asks anew.
                    question_id = derived_id(run_id, run.submission, effect.kind, effect.number)
                    commit.questions.append(
                        PendingApproval(
                            approval_id=question_id[:16],
                            run_id=run_id,
                            attempt=effect.number,  # which of the run's questions it is
                            action=effect.kind,
                            detail=effect.reason,
                            submission=run.submission,
                        )
                    )
                case RunFinished():
                    commit.finished.add(run_id)
                case CancelWork():
                    # Recorded on the events, then told to the workers once durable; a result
                    # that comes anyway is ignored by the engine.
                    notice = work_cancelled(run, effect)
                    commit.events.append(notice)
                    commit.cancellations.append(notice)
                case Ignored():
                    pass

    async def _flush(self, commit: Commit) -> None:
        """Make the step durable (pipelined), then ack and answer its inputs."""
        assert self._store is not None
        assert self._approvals is not None
        self._check_lease()
        pipeline = self._pipeline
        # A question is stored before the run that waits for it, so the run never waits for
        # a question nobody can see.
        if commit.questions:  # (most steps have none: they skip the awaits)
            await self._store_approvals([(question, 0) for question in commit.questions])
        answers = list(commit.answers.values())
        # The work goes out first, in a write of its own, so that workers start on it while the
        # rest of the step is encoded: it needs none of the rest stored first (results are acked
        # only once all of it is, and work sent again after a crash is dropped as a duplicate of
        # its id). Unless answers are stored: the work they release must find them (see below).
        first, later = (commit.work, []) if not answers else ([], commit.work)
        published = [
            sent for subject, item in first if (sent := await self._send_work(subject, item))
        ]
        if published:
            await asyncio.sleep(0)  # nats-py's flusher writes it now
        # (events of a size any server takes: the entry's limit is under its max_payload)
        chunk = min(CHANGES_BYTES, self._store.policy.max_entry_bytes // 4)
        for run_id, moves in commit.moves.items():
            if open_run := self._open.get(run_id):
                changes = task_changes(open_run.run, moves, chunk)
                _add_before_run_end(commit.events, run_id, changes)
        # A run's events are in its journal entry, and published once that is stored (see
        # run_store): a leader deposed meanwhile has it refused, and tells nothing.
        events = _encoded_by_run(commit.events)
        writes: list[StepWrite] = []
        for run_id in events.keys() & self._open.keys():  # (a dead letter's, say)
            commit.dirty.setdefault(run_id, set())
        for run_id, task_ids in commit.dirty.items():
            if open_run := self._open.get(run_id):
                # Events of its earlier steps not stored yet are in this entry too: a load
                # publishes again those of the run's last entry only.
                earlier = self._telling.pop(run_id, [])
                self._telling[run_id] = untold = [e for e in earlier if not _stored(e[1])]
                encoded = [payload for payload, _ in untold]
                encoded += [payload for _, payload in events.get(run_id, ())]
                writes.append(await self._store.save(open_run.stored, task_ids, pipeline, encoded))
        await self._store.entries_stored(pipeline, writes)
        for run_id, batch in events.items():
            if earlier := self._telling.pop(run_id, []):
                # Told in order: the events of its earlier steps are stored first (sent a
                # step ago, they are), else the run is loaded again and they are told again
                # from its last entry, with these after them.
                await pipeline.all_stored([pending for _, pending in earlier], 10)
            told = await self._publish_events(run_id, batch)
            if run_id in self._open and run_id not in commit.finished:
                # The step's results are acked without waiting for these; a failure of one
                # comes through the inbox (the run's next step may be days off).
                for pending in told:
                    pending.future.add_done_callback(functools.partial(_tell_failure, self._inbox))
                payloads = [payload for _, payload in batch]
                self._telling[run_id] = list(zip(payloads, told, strict=True))
            else:  # the run's last events, or none of a run's (unrouted dead letters)
                published += told
        for run_id in commit.finished:
            published += [pending for _, pending in self._telling.pop(run_id, [])]
        if commit.finished:
            # An ended run is never loaded again: its last events must be stored before the
            # header that says it ended.
            await pipeline.all_stored(published, 10)
        if answers:
            # An answer is stored once the run took it (stored first, a run reloaded without
            # it would wait for an answer that can no longer be given) and before the work it
            # releases is sent (which asks the gate, which must find it).
            await self._confirm(writes)
            writes = []
            await self._store_approvals(answers)
        for subject, item in later:
            if sent := await self._send_work(subject, item):
                published.append(sent)
        await self._confirm(writes)
        await pipeline.all_stored(published, 10)
        for msg in commit.acks:
            await self.bus.publisher.ack(msg)
        for msg in commit.again:
            await msg.nak(delay=_early_delay(delivery_count(msg)))
        self._unacked -= len(commit.acks) + len(commit.again)
        self._acked.set()
        for call, reply in commit.replies:
            if not call.reply.done():
                call.reply.set_result(reply)
        for notice in commit.cancellations:
            await self.bus.nc.publish(subjects.cancel_subject(notice.run_id), encode(notice))
        for run_id in commit.finished:
            self._open.pop(run_id, None)
            for merging in self._merges_of.pop(run_id, set()):
                merging.cancel()  # a commit of it is taken off the clone's head again
        for run_id, work in commit.merges:
            # in the background; the outcome comes back through the inbox
            merging = in_background(self._merging, self._integrate(run_id, work))
            of_run = self._merges_of.setdefault(run_id, set())
            of_run.add(merging)
            merging.add_done_callback(of_run.discard)

    async def _publish_events(self, run_id: str, batch: list[tuple[str, bytes]]) -> list[Pending]:
        subject = subjects.events_subject(run_id)
        return [
            await self._pipeline.publish(subject, payload, {MSG_ID_HEADER: msg_id})
            for msg_id, payload in batch
        ]

    async def _send_work(self, subject: str, item: WorkItem) -> Pending | None:
        """Start sending `item`; None if it is too large to send, which fails its task (in the
        next step) rather than the step: failing the step would fail it again at each replay of
        its inputs, holding up every run for good."""
        try:
            return await self.bus.send(subject, item)
        except MessageTooLarge as exc:
            role = subject.removeprefix(subjects.WORK_PREFIX)
            log.error("run %s: work for %s not sent: %s", item.run_id, role, exc)
            reason = f"its work item cannot be sent: {exc}"
            abandoned = WorkAbandoned(item.task_id, item.attempt, role, reason, Usage(), "")
            self._inbox.put_nowait(FollowUp(item.run_id, abandoned))
            return None

    async def _store_approvals(self, writes: list[tuple[PendingApproval, int]]) -> None:
        """Store questions (revision 0: only if new) and answers (each over the revision of the
        question it answers). Both are fenced, so that a deposed leader's late write can neither
        put back a question its successor saw answered nor answer it again: a question there
        already was asked by an earlier leader and is left as it is, and so is one that changed
        since it was read for its answer (someone else wrote it: the answer is logged, not
        stored). Not raised: the runs that took the answers are stored already, and the rest of
        the step (their events, the replies) must follow."""
        pending = []
        for approval, revision in writes:
            key = f"$KV.{subjects.APPROVALS_BUCKET}.{approval.approval_id}"
            fence = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)}
            record = approval
            if self.service_key and approval.status != "pending":  # the gate honours it so only
                record = msgspec.structs.replace(approval, seal=self.service_key.seal(approval))
            pending.append(await self._pipeline.publish(key, encode(record), fence))
        outcomes = await self._pipeline.wait(pending, 10)
        for (approval, revision), outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, PublishError) and outcome.err_code in WRONG_LAST_SEQUENCE:
                if revision:
                    log.warning(
                        "approval %s changed since it was read: its answer (%s by %s) is not "
                        "stored",
                        approval.approval_id,
                        approval.status,
                        approval.answered_by,
                    )
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _confirm(self, writes: list[StepWrite]) -> None:
        assert self._store is not None
        confirmed = self._store.confirm(self._pipeline, writes, before_headers=self._check_lease)
        for stored in await confirmed:
            in_background(self._background, self._store.compact(stored))

    def _check_lease(self) -> None:
        if self._lease is not None and not self._lease.held():
            raise LostLeadership("lease not renewed in time")

    async def _integrate(self, run_id: str, work: Merge | Integrate) -> None:
        """Merge (or finish) in the background; a failing workspace is retried, then the task
        goes back to the coder with the error rather than staying gated forever. While no
        safety gate answers, the merge waits. Cancelled when the leadership ends: the next
        leader sends the merge again."""
        retries = [1.0, 5.0, 15.0]
        while (open_run := self._open.get(run_id)) is not None:
            try:
                event = await self._outcome(open_run, work)
            except GateUnavailable as exc:
                log.warning("run %s: merge waits: %s", run_id, exc)
                await asyncio.sleep(5.0)
                continue
            except Exception as exc:
                log.exception("run %s: %s failed", run_id, type(work).__name__)
                if retries:
                    await asyncio.sleep(retries.pop(0))
                    continue
                report = f"integration error: {exc}"
                event = (
                    MergeFailed(work.task_id, work.attempt, FeedbackKind.CONFLICT, report)
                    if isinstance(work, Merge)
                    else Integrated(ok=False, report=report)
                )
            self._inbox.put_nowait(FollowUp(run_id, event))
            return

    async def _outcome(self, open_run: OpenRun, work: Merge | Integrate) -> Event:
        run = open_run.run
        if isinstance(work, Integrate):
            return await self.integrator.integrate(run)
        if self._gated(run):
            refused = await self._ask_gate(run, work)
            if refused is not None:
                return refused
        return await self.integrator.merge(run, work.task_id, work.attempt)

    async def _ask_gate(self, run: Run, work: Merge) -> Event | None:
        """None if the gate allows merging the task's patch; else what to do instead."""
        task = run.tasks[work.task_id]
        patch = await inline(self.artifacts, task.patch) if task.patch else None
        # the tester's tests are merged with the patch: the gate reads both, as one diff
        merged = (patch.text if patch else "") + (task.tests.text if task.tests else "")
        check = ActionCheck(
            run_id=run.run_id,
            task_id=work.task_id,
            attempt=work.attempt,
            trace_id=run.run_id,
            action="merge",
            detail=merged,
            role="coordinator",
            require_approval=run.approve_merge,
        )
        decision = await self.gate.check(check)
        if decision.decision == "allow":
            return None
        if decision.decision == "needs_approval":
            why = f"merge needs approval {decision.approval_id}: {decision.reason}"
            return ParkTask(work.task_id, work.attempt, why)
        report = f"the safety gate refused the merge: {decision.reason} ({decision.rule})"
        return MergeFailed(work.task_id, work.attempt, FeedbackKind.SAFETY, report)

    async def _expire_approvals(self) -> None:
        """Deny what nobody answered within `approval_timeout` (through the inbox, as if a
        person had denied it)."""
        assert self._approvals is not None
        period = min(30.0, max(0.5, self.approval_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = datetime.now(UTC)
            for approval in await self._pending_approvals():
                waited = (now - approval.requested_at).total_seconds()
                if waited < self.approval_timeout:
                    continue
                reason = f"no answer within {self.approval_timeout:g}s"
                request = Deny(approval_id=approval.approval_id, by="timeout", reason=reason)
                future = asyncio.get_running_loop().create_future()
                self._inbox.put_nowait(ControlCall(request, future))

    # --- control API --------------------------------------------------------------------------

    async def _on_control(
        self, call: ControlCall, commit: Commit, now: datetime
    ) -> Envelope | ReadAfterStep | None:
        request = call.request
        try:
            match request:
                case SubmitRun():
                    return await self._submit(request, call, commit, now)
                case CancelRun():
                    if not request.run_id:
                        return ControlError(error="name the run to cancel", field="$.run_id")
                    # a blank reason would leave the run's error empty: the default instead
                    reason = request.reason.strip() or CancelRun().reason
                    if preparing := self._preparing.get(request.run_id):
                        preparing.cancelled = Cancel(reason)
                        detail = "Cancel (once its repository is prepared, before any work)"
                        return Accepted(run_id=request.run_id, detail=detail)
                    if request.run_id not in self._open:
                        ended = await self._ended(request.run_id)
                        if ended is RunState.CANCELLED:
                            # this request again (see `_answer_approval`), or another's: done
                            return Accepted(run_id=request.run_id, detail=ALREADY_CANCELLED)
                        if ended is not None:
                            error = f"run {request.run_id} has ended ({ended}): nothing to cancel"
                            return ControlError(run_id=request.run_id, error=error)
                    return self._control_event(request.run_id, Cancel(reason), commit, now)
                case StatusQuery():
                    return self._status(request)
                case ListApprovals():
                    return self._fitting_approvals(await self._pending_approvals(request.run_id))
                case Approve() | Deny():
                    return await self._answer_approval(request, commit, now)
        except PoisonedStep:
            raise
        except Exception as exc:
            log.exception("control request %s failed", type(request).__name__)
            return _failed_reply(exc)
        return ControlError(error=f"unsupported request {type(request).__name__}")

    async def _submit(
        self, request: SubmitRun, call: ControlCall, commit: Commit, now: datetime
    ) -> Envelope | None:
        assert self._store is not None
        run_id = request.run_id or new_id()[:16]
        known = self._open.get(run_id)
        preparing = self._preparing.get(run_id)
        if preparing is not None:  # its plan, if submitted with one, is not applied yet
            submitted = preparing.first
            planned = submitted.tasks if isinstance(submitted, PlanProposed) else ()
            tasks = {spec.id: Task(spec=spec) for spec in planned}
            existing: Run | None = msgspec.structs.replace(preparing.run, tasks=tasks)
        else:
            # (an ended run's tasks only to compare a plan with: rarely sent again)
            with_tasks = request.plan is not None
            stored = known.stored if known else await self._store.load(run_id, tasks=with_tasks)
            existing = stored.run if stored is not None else None
        if existing is not None:
            if differences := request.differences(existing):
                return ControlError(
                    run_id=run_id,
                    error=f"run id {run_id!r} is taken by a run with another "
                    + ", ".join(differences),
                    field="$.run_id",
                )
            if preparing is not None:  # the same submission again: answered with the first
                preparing.calls.append(call)
                return None
            return Accepted(run_id=run_id, detail="already submitted")
        if not request.goal.strip():  # (the CLI refuses it too) a planner would plan nothing
            error = "the goal is empty: say what the run is to achieve"
            return ControlError(run_id=run_id, error=error, field="$.goal")
        if request.plan is not None:
            try:
                TaskGraph(request.plan)
            except InvalidPlan as exc:
                # (a plan may be wrong in thousands of places: the reply names what fits)
                return ControlError(run_id=run_id, error=clip(str(exc)), field="$.plan")
        if forged := _set_by_the_coordinator(request.repo):
            # Workers check out what these name: a client must not point them at any path on
            # their disks or at another run's bundles.
            error = f"{forged} is where the coordinator puts the run's code; submit only the path"
            return ControlError(run_id=run_id, error=error, field=f"$.repo.{forged}")
        if problem := _not_a_local_repository(request.repo.path):
            return ControlError(run_id=run_id, error=problem, field="$.repo.path")
        run = Run(
            run_id=run_id,
            goal=request.goal,
            repo=request.repo,
            budget=request.budget,
            reviewers=list(request.reviewers),
            approve_plan=request.approve_plan,
            approve_merge=request.approve_merge,
            # Spaces around a shell line change nothing it runs; one of spaces alone would run
            # nothing and pass, so it means what "" means: detected.
            test_command=request.test_command.strip(),
            submission=new_id()[:12],
            created_at=now,
            updated_at=now,
        )
        first: Event = PlanProposed(tuple(request.plan)) if request.plan else StartPlanning()
        self._preparing[run_id] = Preparation(run, first, [call])
        reviewers = reviewers_named(run.reviewers, request.plan or ())
        in_background(self._merging, self._prepare(run, reviewers))
        return None

    async def _prepare(self, run: Run, reviewers: Iterable[str]) -> None:
        # Before the run exists, hence before any of its work is sent; a consumer not created
        # in time is still being tried, and the run goes on (its work waits in the stream).
        await self.reviewer_consumers.ensure(reviewers)
        try:
            repo = await self.integrator.prepare(run)
        except Exception as exc:
            log.warning("run %s: cannot prepare its repository: %s", run.run_id, exc)
            if isinstance(exc, RunIdTaken):
                prepared = Prepared(run.run_id, None, f"run_id: {exc}", "$.run_id")
            elif isinstance(exc, GitError | RepositoryNotWritable):  # git refused the repository
                prepared = Prepared(run.run_id, None, f"repository: {exc}", "$.repo")
            else:  # the disk, the object store: the same submission may well work later
                error = f"could not prepare the repository, try again: {type(exc).__name__}: {exc}"
                prepared = Prepared(run.run_id, None, error)
            self._inbox.put_nowait(prepared)
        else:
            self._inbox.put_nowait(Prepared(run.run_id, repo))

    async def _on_prepared(self, prepared: Prepared, commit: Commit, now: datetime) -> None:
        """Create the run whose workspace is ready, and answer everyone who submitted it."""
        assert self._store is not None
        preparation = self._preparing.pop(prepared.run_id, None)
        if preparation is None:  # from an earlier leadership
            return
        run, run_id = preparation.run, prepared.run_id
        reply: Envelope
        if prepared.repo is None:
            reply = ControlError(run_id=run_id, error=clip(prepared.error), field=prepared.field)
        else:
            run.repo = prepared.repo
            stored = await self._store.new_run(run)
            engine = RunEngine(run, capacity=self._capacity_of_a_new_run())
            open_run = OpenRun(stored, engine)
            self._open[run_id] = open_run
            commit.dirty.setdefault(run_id, set())
            commit.events.append(run_event(run, RunMoved(run.state, run.state, "submitted")))
            self._apply(open_run, preparation.cancelled or preparation.first, commit, now)
            reply = Accepted(run_id=run_id, detail=f"run {run_id} submitted", created=True)
        commit.replies += [(call, reply) for call in preparation.calls]

    async def _ended(self, run_id: str) -> RunState | None:
        """The state a run ended in; None when it has not ended, or there is no such run."""
        assert self._store is not None
        stored = await self._store.load(run_id)
        if stored is None or stored.run.state not in TERMINAL_RUN_STATES:
            return None
        return stored.run.state

    def _control_event(self, run_id: str, event: Event, commit: Commit, now: datetime) -> Envelope:
        open_run = self._open.get(run_id)
        if open_run is None:
            return ControlError(run_id=run_id, error=f"no open run {run_id!r}", field="$.run_id")
        key: PoisonKey = ("control", _event_key(run_id, event))
        if error := self._poisoned(key):
            return ControlError(run_id=run_id, error=f"{type(event).__name__} not applied: {error}")
        # Guarded, not caught with the other failures of a request (`_on_control`): the run
        # may be half changed, so the step is dropped and the run reloaded.
        with self._guarded(key, f"{type(event).__name__} to run {run_id}"):
            effects = self._apply(open_run, event, commit, now)
        if _ignored(effects):
            return ControlError(run_id=run_id, error=effects[0].reason)  # type: ignore[union-attr]
        return Accepted(run_id=run_id, detail=type(event).__name__)

    def _status(self, query: StatusQuery) -> Envelope | ReadAfterStep:
        """An open run's status from this leader's copy, now; the rest read after the step."""
        store = self._store
        assert store is not None
        if run_id := query.run_id:
            if preparing := self._preparing.get(run_id):  # (its state: planning, once prepared)
                return RunStatus(run_id=run_id, runs=[preparing.run])
            if open_run := self._open.get(run_id):
                return self._run_status(open_run.run, query)
            # Not open: ended (its record is final), or unknown.
            header_only = query.paged and query.after >= AFTER_EVERY_ID

            async def ended_run() -> Envelope:
                stored = await store.load(run_id, tasks=not header_only)
                if stored is None:
                    return unknown_run(run_id)
                return self._run_status(stored.run, query)

            return ReadAfterStep(ended_run)
        # An open run's header in the bucket may be a step behind: this leader's copy is not.
        open_headers = {
            run_id: msgspec.structs.replace(open_run.run, tasks={})
            for run_id, open_run in self._open.items()
        }

        async def every_run() -> Envelope:
            stored = await store.headers()
            return self._fitting([open_headers.get(run.run_id, run) for run in stored])

        return ReadAfterStep(every_run)

    def _run_status(self, run: Run, query: StatusQuery) -> Envelope:
        if query.paged:
            return self._page(run, query.after)
        return RunStatus(run_id=run.run_id, runs=[run])

    def _page(self, run: Run, after: str) -> Envelope:
        """`run` whole when it fits in a reply (most runs, in their own order); else a page:
        its tasks after `after`, in id order, as many as fit. Measured task by task, up to a
        reply's worth: a run too big for one reply is never encoded whole for each page (at
        10,000 tasks, megabytes: tens of milliseconds of the coordinator's loop)."""
        limit, which = self._reply_limit()
        header = msgspec.structs.replace(run, tasks={})
        # (room for `more_after` too: an id, encoded as it is)
        room = limit - len(encode(RunStatus(run_id=run.run_id, runs=[header]))) - 256
        page: dict[str, Task] = {}
        more_after = ""
        for task_id in sorted(task_id for task_id in run.tasks if task_id > after):
            size = len(encode(run.tasks[task_id])) + len(task_id) + 4  # "id":{...},
            if size > room:
                if not page:
                    error = f"task {task_id} of run {run.run_id} is {size} bytes, over {which}"
                    return ControlError(run_id=run.run_id, error=error)
                more_after = next(reversed(page))
                break
            page[task_id] = run.tasks[task_id]
            room -= size
        if not after and not more_after:
            return RunStatus(run_id=run.run_id, runs=[run])
        runs = [msgspec.structs.replace(header, tasks=page)]
        return RunStatus(run_id=run.run_id, runs=runs, more_after=more_after)

    def _fitting(self, runs: list[Run]) -> RunStatus:
        """The status of `runs` in one reply: `cy_runs` keeps every run forever, so their
        headers add up past a message in time. The oldest ended runs are left out (counted in
        `omitted`) until the rest fits; open runs always stay. If they alone do not fit (goals
        of 20,000 characters add up), their goals and errors are cut short: each run's own
        status has them whole."""
        reply = RunStatus(runs=runs)
        size = len(encode(reply))
        limit, _ = self._reply_limit()
        if size <= limit:
            return reply
        ended = sorted(
            (index for index, run in enumerate(runs) if run.state in TERMINAL_RUN_STATES),
            key=lambda index: runs[index].updated_at,
        )
        left_out = _left_out(size, limit, [(index, runs[index]) for index in ended])
        kept = [run for index, run in enumerate(runs) if index not in left_out]
        reply = RunStatus(runs=kept, omitted=len(left_out))
        if len(left_out) == len(ended) and len(encode(reply)) > limit:
            # (if even that does not fit, `_respond` refuses the reply, saying so)
            reply = RunStatus(runs=[_abridged(run) for run in kept], omitted=len(left_out))
        return reply

    async def _pending_approvals(self, run_id: str = "") -> list[PendingApproval]:
        """Unanswered approvals of open runs (of `run_id` only, if given), oldest first."""
        assert self._approvals is not None
        pending = [
            approval
            for approval in await self._approvals.values()
            if approval.status == "pending"
            and approval.run_id in self._open
            and not self._other_submissions(approval)
            and not self._not_asked_yet(approval)
            and (not run_id or approval.run_id == run_id)
        ]
        return sorted(pending, key=lambda approval: approval.requested_at)

    def _fitting_approvals(self, approvals: list[PendingApproval]) -> ApprovalList:
        """`approvals` in one reply, the newest left out (counted in `omitted`) until the rest
        fits: the oldest are denied first when nobody answers."""
        reply = ApprovalList(approvals=approvals)
        size = len(encode(reply))
        limit, _ = self._reply_limit()
        if size <= limit:
            return reply
        newest_first = list(reversed(list(enumerate(approvals))))
        left_out = _left_out(size, limit, newest_first)
        kept = [approval for index, approval in enumerate(approvals) if index not in left_out]
        return ApprovalList(approvals=kept, omitted=len(left_out))

    async def _answer_approval(
        self, request: Approve | Deny, commit: Commit, now: datetime
    ) -> Envelope:
        assert self._approvals is not None
        entry = await self._approvals.get(request.approval_id)
        if entry is None:
            return ControlError(
                error=f"no pending approval {request.approval_id!r}", field="$.approval_id"
            )
        approval = entry.value
        # An answer taken earlier in this step is stored only when the step ends: until then it
        # counts as stored, or a second answer (approve and deny at once, a person and the
        # timeout) would be judged against the question as it was, and overwrite the first.
        decided = commit.answers.get(approval.approval_id, (approval, 0))[0]
        approved = isinstance(request, Approve)
        if decided.status == "pending" and (taken := self._taken_answer(approval)):
            # The run took an answer in a step cut before the answer's record was written: the
            # record is written now, and the request judged against the answer taken.
            decided = _answered_as(approval, taken)
            commit.answers[approval.approval_id] = (decided, entry.revision)
        if _answered_so_by(decided, approved, request.by):
            # This request again: told to send it again (`retry`) when the session that
            # stored it ended before its reply, or its client's try timed out.
            return Accepted(run_id=decided.run_id, detail=f"already {decided.status}")
        if decided.status != "pending":
            by = f" by {decided.answered_by}" if decided.answered_by else ""
            return ControlError(
                error=f"approval {decided.approval_id} was already {decided.status}{by}",
                field="$.approval_id",
            )
        reason = _reason(request)
        answer = msgspec.structs.replace(
            approval,
            status="approved" if approved else "denied",
            answered_by=request.by,
            answer=reason,
        )
        if approval.run_id not in self._open and (ended := await self._ended(approval.run_id)):
            # A question its run left behind as it ended (cancelled meanwhile, say): recorded
            # as answered, so that it is no longer listed as waiting.
            commit.answers[approval.approval_id] = (answer, entry.revision)
            return ControlError(
                run_id=approval.run_id,
                error=f"run {approval.run_id} has ended ({ended}): the answer to approval "
                f"{approval.approval_id} is recorded, and changes nothing",
            )
        if not_yet := self._not_asked_yet(approval):
            # Not recorded: the run asks it again, with this id, and must find it pending.
            return ControlError(run_id=approval.run_id, error=not_yet, field="$.approval_id")
        if stale := self._no_longer_asked(approval):
            # Recorded all the same, so the question is no longer listed, nor expired again.
            commit.answers[approval.approval_id] = (answer, entry.revision)
            return ControlError(
                run_id=approval.run_id,
                error=f"{stale}: the answer to approval {approval.approval_id} is recorded, "
                "and changes nothing",
            )
        event: Event
        if approval.action == "plan":
            event = PlanApproved() if approved else PlanRejected(reason)
        elif approval.action == "budget":
            # Approving an overrun lifts the limits that were exceeded (as of now: what came in
            # while it waited counts too, or the run would stop again at once), not the others.
            open_run = self._open.get(approval.run_id)
            lifted = lift_exceeded(open_run.run.usage, open_run.run.budget) if open_run else None
            event = ResumeRun(lifted) if approved else Cancel(f"budget: {reason}")
        elif approval.task_id:
            # The gate parked this task's action; the resent work finds the answer at the gate.
            event = ResumeTask(approval.task_id, approval.attempt, approved, reason)
        else:
            return ControlError(error=f"approval of kind {approval.action!r} is not handled here")
        reply = self._control_event(approval.run_id, event, commit, now)
        if isinstance(reply, Accepted):
            commit.answers[approval.approval_id] = (answer, entry.revision)
            if open_run := self._open.get(approval.run_id):  # stored with the run, in this step
                open_run.run.answered[approval.approval_id] = GivenAnswer(
                    status=answer.status, by=request.by, reason=reason
                )
        return reply

    def _taken_answer(self, approval: PendingApproval) -> GivenAnswer | None:
        """The answer to `approval` its open run took, if it took one (see `Run.answered`)."""
        open_run = self._open.get(approval.run_id)
        if open_run is None or self._other_submissions(approval):
            return None
        return open_run.run.answered.get(approval.approval_id)

    def _other_submissions(self, approval: PendingApproval) -> str:
        """Why the question is not its open run's own, or "": an earlier submission of the same
        run id asked it (that submission was cut before its run was stored)."""
        open_run = self._open.get(approval.run_id)
        if open_run is None or approval.submission in ("", open_run.run.submission):
            return ""
        return f"an earlier submission of run {approval.run_id} asked this"

    def _not_asked_yet(self, approval: PendingApproval) -> str:
        """Why a question is not asked yet, or "". A task's: the gate stores it before the
        worker's answer parks the task, and an answer in between (`codeyard run --yes` answers
        at once) would be refused, while the task then parked waits for an answer given. A
        run's: a step stored the question, then was lost before the run that asked it was
        stored; the reloaded run asks it again later."""
        open_run = self._open.get(approval.run_id)
        if open_run is None:
            return ""
        if task := open_run.run.tasks.get(approval.task_id):
            if task.state is TaskState.AWAITING_APPROVAL and task.attempt == approval.attempt:
                return ""
            return (
                f"task {approval.task_id} of run {approval.run_id} has not stopped for this "
                f"question (it is {task.state}, attempt {task.attempt}); answer it once it waits"
            )
        if approval.action not in RUN_QUESTIONS:
            return ""
        if self._other_submissions(approval) or approval.attempt <= open_run.run.questions:
            return ""
        return (
            f"run {approval.run_id} has not asked this yet (the step that asked it was lost); "
            "answer it when it is asked again"
        )

    def _no_longer_asked(self, approval: PendingApproval) -> str:
        """Why a run's question (plan, budget) no longer stands, or "": the run moved on (an
        answer stored too late, see `_flush`), or asked a newer question since (the budget,
        overrun again). A task's question is the engine's to judge (the task may not be parked
        yet when a person answers)."""
        open_run = self._open.get(approval.run_id)
        if approval.action not in RUN_QUESTIONS or open_run is None:
            return ""
        if other := self._other_submissions(approval):
            return other
        run = open_run.run
        waits = RunState.PLAN_APPROVAL if approval.action == "plan" else RunState.AWAITING_APPROVAL
        if run.state is not waits:
            return f"run {run.run_id} is {run.state}, no longer waiting for this answer"
        if approval.attempt != run.questions:
            return f"run {run.run_id} asked a newer question since"
        return ""


def _event_key(run_id: str, event: Event | Merge | Integrate) -> str:
    """An event or a merge as it comes again: the same kind for the same task attempt (its
    other fields, such as a merge's new head, may differ from one time to the next)."""
    task = getattr(event, "task_id", "")
    return f"{run_id} {type(event).__name__} {task} {getattr(event, 'attempt', '')}"


def _not_a_local_repository(path: str) -> str:
    """Why the coordinator will not clone `path`, or "" (none: a dry run, or a directory on its
    disk). A remote one (`git://`, `ssh://`, `https://`, `host:path`) could take as long as its
    server stalls, and the result branch is fetched back into the repository, on this disk."""
    if not path:
        return ""
    named = repr(clip(path, 300))
    if not os.path.isabs(path):
        return (
            "the repository must be the absolute path of a directory on the coordinator's "
            f"machine (URLs and host:path are not cloned): got {named}"
        )
    try:
        is_directory = Path(path).is_dir()
    except (OSError, ValueError) as exc:  # a NUL in it, a name too long, ...
        return f"the repository {named} cannot be read: {clip(str(exc), 300)}"
    if not is_directory:
        return f"the repository {named} is no directory on the coordinator's machine"
    return ""


def _set_by_the_coordinator(repo: RepoRef) -> str:
    """The first field of a submitted `repo` that only the coordinator may set, or ""."""
    for name in ("snapshot", "head", "bundles"):
        if getattr(repo, name):
            return name
    return ""


# Room for the digits of `RunStatus.omitted` beyond the "0" a full status has.
_OMITTED_DIGITS = 20


# How much of a goal or error the status of every run keeps when open runs' headers alone are
# more than a reply holds: room for about 400 runs in a megabyte.
_ABRIDGED_CHARS = 500


def _abridged(run: Run) -> Run:
    return msgspec.structs.replace(
        run, goal=clip(run.goal, _ABRIDGED_CHARS), error=clip(run.error, _ABRIDGED_CHARS)
    )


def _left_out(size: int, limit: int, candidates: Sequence[tuple[int, msgspec.Struct]]) -> set[int]:
    """The positions of the `candidates` (position, item) to leave out of a list reply of `size`
    bytes, taken in turn, until it fits in `limit` with its `omitted` count."""
    size += _OMITTED_DIGITS
    left_out: set[int] = set()
    for index, item in candidates:
        if size <= limit:
            break
        size -= len(encode(item)) + 1  # and the comma beside it
        left_out.add(index)
    return left_out


def _what(reply: Envelope) -> str:
    """What a control reply is, as a person asked for it."""
    match reply:
        case RunStatus(runs=[run]) if reply.run_id:
            return f"the status of run {run.run_id}"
        case RunStatus():
            left_out = f" ({reply.omitted} ended runs left out)" if reply.omitted else ""
            return f"the status of {len(reply.runs)} runs{left_out}"
        case ApprovalList():
            return f"the list of {len(reply.approvals)} pending approvals"
    return f"the {type(reply).__name__} reply"


def _output_chars(result: Result) -> int:
    """The characters of what `_keep_output` keeps of `result`."""
    if isinstance(result, CodeResult):
        return len(result.patch.text) + len(result.summary)
    if isinstance(result, TestResult):
        return len(result.output) + (len(result.tests.text) if result.tests else 0)
    return 0


def _keep_output(task: Task | None, result: Result) -> None:
    """What the next role of the task needs from this result: the patch, the test output and
    the tester's tests (those of passing tests only: failing ones send the task back)."""
    if task is not None and isinstance(result, CodeResult):
        task.patch, task.summary, task.test_output, task.tests_run, task.tests = (
            result.patch,
            result.summary,
            "",
            0,
            None,
        )
    elif task is not None and isinstance(result, TestResult):
        task.test_output, task.tests_run = result.output, result.tests_run
        task.tests = result.tests if result.passed else None


def _usage_of(result: Result) -> UsageReported | None:
    """What the result's LLM calls cost and the model that answered them, for the events (the
    report sums the cost by role and names each role's models)."""
    if not result.usage.calls:
        return None
    return UsageReported(
        run_id=result.run_id,
        task_id=result.task_id,
        attempt=result.attempt,
        # (an event's trace may not be empty; an answer's may, standing for the run's)
        trace_id=result.trace_id or result.run_id,
        msg_id=derived_id(result.msg_id, "usage"),
        role=role_of(result),
        usage=result.usage,
        model=result.model,
    )


def _reason(request: Approve | Deny) -> str:
    return request.reason if isinstance(request, Deny) else request.comment


def _ignored(effects: list[Effect]) -> bool:
    return len(effects) == 1 and isinstance(effects[0], Ignored)


def _early(effects: list[Effect]) -> bool:
    return _ignored(effects) and effects[0].early  # type: ignore[union-attr]


def _early_delay(deliveries: int) -> float:
    """How long an early answer waits before it comes again: 0.1 s, doubling up to 5 s."""
    return min(0.1 * 2.0 ** min(deliveries - 1, 6), 5.0)


def early_patience(ack_wait: float) -> int:
    """How many deliveries of an early answer (see `Ignored.early`) there are before it is
    dropped: enough to wait twice `ack_wait`, and two minutes at least. The result that takes its
    run where it applies comes back within one ack_wait of the lost step (plus a new leader's
    takeover); past that it never will (30 deliveries for the default 30 s)."""
    patience = max(2 * ack_wait, 120.0)
    waited, deliveries = 0.0, 1
    while waited < patience:
        waited += _early_delay(deliveries)
        deliveries += 1
    return deliveries


def _add_before_run_end(events: list[RunEvent], run_id: str, added: Sequence[RunEvent]) -> None:
    """`added` (events of run `run_id`) into `events`: before that run's end, if the step
    ended it, else last. Followers (`codeyard run`, `logs -f`) stop reading at the end."""
    ends = (
        index
        for index, event in enumerate(events)
        if event.run_id == run_id
        and isinstance(event, RunStateChanged)
        and event.state in TERMINAL_RUN_STATES
    )
    at = next(ends, len(events))
    events[at:at] = added


def _encoded_by_run(events: list[RunEvent]) -> dict[str, list[tuple[str, bytes]]]:
    """Each event's id and encoding, by run, in order."""
    by_run: dict[str, list[tuple[str, bytes]]] = {}
    for event in events:
        by_run.setdefault(event.run_id, []).append((event.msg_id, encode(event)))
    return by_run


def _decoded_events(stored: StoredRun) -> list[RunEvent]:
    """The events of a loaded run's last step, to publish again: the step's writer may have
    stopped before they were stored. One unreadable (written by another version) is logged
    and left out."""
    events = []
    for payload in stored.last_events:
        try:
            events.append(decode(payload, RunEvent))
        except MessageError as exc:
            log.error("run %s: an event of its last step is unreadable: %s", stored.run.run_id, exc)
    return events


RETRY_TELLING = 1.0  # seconds to tell requesters to send again, as a leadership session ends
HAND_BACK_DELAY = 1.0  # seconds: past the end of the session that hands them back


def _stored(pending: Pending) -> bool:
    """Whether the server acked `pending`. One that failed is not: dropped from the next
    entry, it was lost for good when that entry became the one a reload tells again (its
    failure, put in the inbox, ends the session only after that step)."""
    future = pending.future
    return future.done() and not future.cancelled() and future.exception() is None


def _tell_failure(inbox: asyncio.Queue[Input], published: asyncio.Future[PubAck]) -> None:
    """Put `Untold` in the session's `inbox` if `published` failed."""
    if not published.cancelled() and (error := published.exception()) is not None:
        inbox.put_nowait(Untold(error))


async def _hand_back(results: Iterable[Msg]) -> None:
    """Have `results` delivered again in a second (`HAND_BACK_DELAY`), to whichever session
    leads then, rather than after ack_wait. Best effort: with NATS away, ack_wait does it.
    A result acked already is not delivered again."""
    for msg in results:
        with contextlib.suppress(Exception):
            await msg.nak(delay=HAND_BACK_DELAY)


async def _read_if_after_step(reply: Envelope | ReadAfterStep) -> Envelope:
    if not isinstance(reply, ReadAfterStep):
        return reply
    try:
        return await reply.read()
    except Exception as exc:
        log.exception("reading the reply to a control request failed")
        return _failed_reply(exc)


def _failed_reply(exc: Exception) -> ControlError:
    """The reply to a request whose handling failed (logged where it failed)."""
    return ControlError(error=clip(f"{type(exc).__name__}: {exc}"))


def _answered_as(approval: PendingApproval, taken: GivenAnswer) -> PendingApproval:
    """The record of `approval` answered as its run took the answer (`Run.answered`)."""
    return msgspec.structs.replace(
        approval, status=taken.status, answered_by=taken.by, answer=taken.reason
    )


def _answered_so_by(approval: PendingApproval, approved: bool, by: str) -> bool:
    status = "approved" if approved else "denied"
    return approval.status == status and approval.answered_by == by


def _drained(queue: asyncio.Queue[Input]) -> list[Input]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _stop_serving(subscriptions: list[Subscription], patience: float) -> None:
    """Stop taking requests on `subscriptions`, handing those already delivered to their
    callback first (nats-py's drain: unsubscribe, a round trip, then the queue emptied). If
    that fails or takes over `patience` seconds (the connection is away: the server forgot
    them anyway), they are dropped."""

    async def stop(subscription: Subscription) -> None:
        try:
            async with asyncio.timeout(patience):
                await subscription.drain()  # type: ignore[no-untyped-call]
        except Exception:  # (the connection is away or closed)
            # drain() leaves it marked closed, so unsubscribe() would refuse: removed by hand,
            # or a reconnect would subscribe it again (nats-py renews every subscription).
            with contextlib.suppress(Exception):
                subscription._stop_processing()
            with contextlib.suppress(Exception):
                subscription._conn._remove_sub(subscription._id)

    await asyncio.gather(*(stop(subscription) for subscription in subscriptions))


class _Addressed(msgspec.Struct, frozen=True):
    """The envelope of an answer that could not be read whole, as far as it can be."""

    run_id: str = ""
    task_id: str = ""
    attempt: int = 0
    trace_id: str = ""
    msg_id: str = ""
    proof: str = ""


class _BatchParts(msgspec.Struct, frozen=True):
    """A `ResultBatch` with its results left undecoded."""

    type: str = ""
    results: list[msgspec.Raw] = []


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A result of a batch that cannot be read, and why."""

    payload: bytes
    error: MessageError


def _read_part(part: bytes) -> Result | _Unreadable:
    try:
        result: Result = decode(part, Result)
    except MessageError as exc:
        return _Unreadable(part, exc)
    return result


def _batch_parts(data: bytes) -> list[bytes] | None:
    """The results of a batch that could not be read whole, each as its own JSON text; None if
    `data` is not a batch of results."""
    try:
        batch = msgspec.json.decode(data, type=_BatchParts)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None
    if batch.type != ResultBatch.__name__ or not batch.results:
        return None
    return [bytes(part) for part in batch.results]


def _addressed(data: bytes) -> _Addressed | None:
    """Which work an unreadable answer answers, if it says so well enough to fail that work."""
    try:
        addressed = msgspec.json.decode(data, type=_Addressed)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None
    return addressed if addressed.run_id and addressed.attempt > 0 else None


def refused_answer(answer: Result | _Addressed, role: str, reason: str) -> WorkFailed:
    """What an answer on `role`'s subject that cannot be taken stands for: `role` failing the
    work it answers. Applied like any `WorkFailed`, it fails that work only if it is `role`'s
    and out, so a sender can fail nothing it could not fail by answering."""
    return WorkFailed(
        run_id=answer.run_id,
        task_id=answer.task_id,
        attempt=answer.attempt,
        trace_id=answer.trace_id,
        msg_id=derived_id(answer.msg_id or new_id(), "refused"),
        role=role,
        reason=clip(reason),
    )
