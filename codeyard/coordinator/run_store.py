"""Runs in the `cy_runs` KV bucket, and a journal of their latest changes.

Keys: `<run_id>` holds the `Run` with `tasks` empty (the header); `<run_id>.<task_id>` holds each
`Task`. Splitting the graph by task keeps each write small (a 10,000-task run would not fit in
one NATS message).

Writing each changed task to KV at every step cost about five writes per task. Instead, one
step's changes to a run are one entry of the run's journal (`cy.journal.<run_id>`): its header
and the tasks that changed (several entries when too big for one message). From time to time a
step is also a *checkpoint*: once its entry is stored, every task changed since the last
checkpoint is written to KV, then the header, naming the last journal entry they include
(`Run.journal_seq`); the entries before it are then purged. Loading a run reads its KV records
and applies the journal entries after that one, in order. The entry always comes first: a
checkpoint cut short (some tasks written, not its header) loads whole, its entry replayed over
what landed. A run checkpoints when its journal reached `CheckpointPolicy`'s length or age,
which bounds what loading a run replays.

A step's events (`cy.events.<run_id>`) are also in its last entry. They are published once the
entry is stored, never before: a coordinator that lost its lease learns it from its entry being
refused, and must tell nothing of a step that never happened (followers would show its tasks
going back). Published, they may be lost (the server stopped before storing them, the
coordinator died first): until they are stored, the run's next entries hold them too, and its
next events are published only once they are stored. So the run's last entry holds every
event that may have been lost, and loading a run reads them from it (`StoredRun.last_events`)
for the coordinator to publish again, in order, under their own ids (a copy still in the
events stream's duplicate window is dropped). An ended run's header, after which it is never
loaded again, is written only once its step's events are stored.

Events too many for the entry (cancelling a run of thousands of tasks, say) are stored beside
it instead, each a message on `cy.journal.<run_id>.events` (in the journal's stream), before the
entry, which names their sequences (`JournalEntry.outbox`). Like those in the entry, they are
published once it is stored (the last, for a step of several entries). They are purged with the
journal.

A run's header is also written (not as a checkpoint) when the run is new, so that a new leader
finds it, and when it ends, so that a new leader leaves it closed; always last in its step.

Every write is revision-checked: a journal entry names the sequence of the run's previous one,
a KV write the revision it replaces. A coordinator that lost its lease cannot write over its
successor: its writes fail with `StaleRevision`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from codeyard.bus import subjects
from codeyard.bus.kv_scan import latest_entries, messages_after
from codeyard.bus.pipeline import Pending, PubAck, PublishError, PublishPipeline
from codeyard.bus.store import EXPECTED_LAST_SUBJECT_SEQUENCE, WRONG_LAST_SEQUENCE, StaleRevision
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas.codec import MessageError, decode, encode
from codeyard.schemas.model import Run, Task

log = logging.getLogger(__name__)


class JournalEntry(msgspec.Struct, frozen=True):
    """One step's changes to a run: its header (tasks left out) and the tasks that changed.
    A step too big for one message is several entries with the same `step` (where the run's
    journal stood before it), all but the last marked `more`; a load applies a step only once
    its last entry is there, so the first entries of a step whose writer died are ignored."""

    header: Run
    tasks: dict[str, Task]
    step: int = 0
    more: bool = False
    events: list[msgspec.Raw] = []  # the step's events, encoded: in its last entry only
    # or, too many for it, the sequences of the messages that hold them (in the last entry)
    outbox: list[int] = []


@dataclass(frozen=True)
class CheckpointPolicy:
    max_entry_bytes: int = 512 * 1024  # a step whose entry would be bigger is several
    max_entries: int = 256  # journal entries between two checkpoints of a run, at most
    max_age: float = 10.0  # seconds between two checkpoints of a changing run, at most


@dataclass
class StoredRun:
    """A run as loaded or saved, and where its records stand in the store."""

    run: Run
    revisions: dict[str, int] = field(default_factory=dict)  # per KV key (0: not written yet)
    journal_last: int = 0  # sequence of the run's last journal entry (0: none)
    checkpoint_seq: int = 0  # the last entry its last checkpoint includes
    unsaved: set[str] = field(default_factory=set)  # tasks changed since the last checkpoint
    entries: int = 0  # journal entries since the last checkpoint
    # The first `outbox` message of the run's latest step that had any (0: none yet): a
    # compaction keeps it and those after it, which a load may need.
    outbox_from: int = 0
    checkpointed_at: float = field(default_factory=time.monotonic)
    # As loaded: the events of the run's last step, which may never have been stored (its
    # writer stopped first); publishing them again is up to the loader.
    last_events: list[bytes] = field(default_factory=list)


def header_key(run_id: str) -> str:
    return run_id


def task_key(run_id: str, task_id: str) -> str:
    return f"{run_id}.{task_id}"


WriteKind = Literal["journal", "header", "task", "checkpoint"]


@dataclass
class PendingWrite:
    stored: StoredRun
    kind: WriteKind  # "checkpoint": the header of a checkpoint
    key: str  # the KV key, or the journal subject
    payload: bytes
    expected: int
    sent: Pending | None = None  # None: not published yet


@dataclass
class StepWrite:
    """One step's writes to one run, in the order `confirm` sends them: the journal entries,
    then for a checkpoint every task changed since the last one, then the header (if any)."""

    stored: StoredRun
    header: Run | None  # tasks left out; None: the header is not written in this step
    entries: list[bytes]  # those not sent yet
    sent: PendingWrite | None = None  # the entry in flight
    checkpoint: bool = False
    tasks: list[PendingWrite] = field(default_factory=list)


class RunStore:
    def __init__(
        self, js: JetStreamContext, kv: KeyValue, policy: CheckpointPolicy | None = None
    ) -> None:
        self._js = js
        self._kv = kv
        self._prefix = f"$KV.{subjects.RUNS_BUCKET}."
        self.policy = policy or CheckpointPolicy()

    @classmethod
    async def open(cls, js: JetStreamContext, policy: CheckpointPolicy | None = None) -> RunStore:
        return cls(js, await js.key_value(subjects.RUNS_BUCKET), policy)

    # --- reading ------------------------------------------------------------------------------

    async def load(self, run_id: str, *, tasks: bool = False) -> StoredRun | None:
        """One run's header, and with `tasks` every task too, journal applied. The header alone
        is as of the last checkpoint (an ended run's is final)."""
        try:
            entry = await self._kv.get(header_key(run_id))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        run = decode(entry.value, Run)
        stored = StoredRun(run, {entry.key: entry.revision}, checkpoint_seq=run.journal_seq)
        if tasks:
            async for key, value, revision in self._latest(f"{run_id}.>"):
                task_id = key.partition(".")[2]
                stored.run.tasks[task_id] = decode(value, Task)
                stored.revisions[key] = revision
            await self._replay(stored)
        return stored

    async def headers(self) -> list[Run]:
        """Every readable run header as of its last checkpoint (tasks left out), oldest first;
        one that cannot be decoded is logged and left out."""
        runs = []
        async for key, value, _ in self._latest("*"):  # one token: headers
            try:
                runs.append(decode(value, Run))
            except MessageError as exc:
                log.error("run %s: its stored header is unreadable, skipping it: %s", key, exc)
        return sorted(runs, key=lambda run: run.created_at)

    def _latest(self, keys: str) -> AsyncIterator[tuple[str, bytes, int]]:
        return latest_entries(self._js, subjects.RUNS_BUCKET, keys)

    async def _replay(self, stored: StoredRun) -> None:
        """Apply the journal entries written after the run's last checkpoint, and keep the
        events of the last entry (a checkpoint's own is kept until the next: see `compact`)."""
        subject = subjects.journal_subject(stored.run.run_id)
        try:
            last = await self._js.get_last_msg(subjects.JOURNAL_STREAM, subject)
        except NotFoundError:
            return
        stored.journal_last = last.seq or 0
        entry = decode(last.data or b"", JournalEntry)
        # (none if its step never ended: the writer died between the entries of a big step)
        if not entry.more:
            stored.last_events = [bytes(event) for event in entry.events]
            stored.last_events += await self._outboxed(stored.run.run_id, entry.outbox)
            stored.outbox_from = min(entry.outbox, default=0)
        tasks = stored.run.tasks
        if stored.journal_last <= stored.checkpoint_seq:
            return
        step: JournalEntry | None = None  # the first entries of a step, until its last
        pending: dict[str, Task] = {}
        async for sequence, data in messages_after(
            self._js, subjects.JOURNAL_STREAM, subject, stored.checkpoint_seq
        ):
            entry = decode(data, JournalEntry)
            stored.entries += 1
            stored.journal_last = max(stored.journal_last, sequence)
            if step is not None and step.step != entry.step:  # its writer died before its end
                pending = {}
            pending.update(entry.tasks)
            step = entry if entry.more else None
            if step is None:
                stored.run = msgspec.structs.replace(entry.header, tasks=tasks)
                tasks.update(pending)
                stored.unsaved.update(pending)
                pending = {}

    async def _outboxed(self, run_id: str, sequences: list[int]) -> list[bytes]:
        """The events kept beside a journal entry, in order; one that is gone is logged and left
        out (it is purged only once a later step is stored, by which time the events were)."""
        subject = subjects.journal_events_subject(run_id)
        events = []
        for sequence in sequences:
            try:
                msg = await self._js.get_msg(subjects.JOURNAL_STREAM, sequence)
            except NotFoundError:
                msg = None
            if msg is None or msg.subject != subject or msg.data is None:
                log.warning("run %s: an event of its last step is gone (%d)", run_id, sequence)
                continue
            events.append(msg.data)
        return events

    # --- writing ------------------------------------------------------------------------------

    async def save(
        self,
        stored: StoredRun,
        task_ids: Iterable[str],
        pipeline: PublishPipeline,
        events: Sequence[bytes] = (),
    ) -> StepWrite:
        """Start making one step's changes to the run durable through `pipeline`: its journal
        entry goes out now, with the step's encoded `events` (stored beside it first when too
        many for it: see the module's docstring); `confirm` writes the rest, in order, before
        the step is acted on.

        The journal entry comes first, always: it is the step's commit. A checkpoint's task
        records and a header are written only once it is stored, so a step cut short anywhere
        loads either not at all or whole (the entry replays over whatever part of a checkpoint
        landed), and a header never names an entry that is not there."""
        run, run_id = stored.run, stored.run.run_id
        changed = set(task_ids)
        new = header_key(run_id) not in stored.revisions
        header = msgspec.structs.replace(run, tasks={}, journal_seq=stored.checkpoint_seq)
        tasks = {t: run.tasks[t] for t in changed}
        outbox: list[int] = []
        if sum(len(event) for event in events) > self.policy.max_entry_bytes // 2:
            outbox = await self._store_beside(pipeline, run_id, events)
            stored.outbox_from = outbox[0]
            events = ()
        step = StepWrite(stored, header, self._entries(header, tasks, events, outbox, stored))
        stored.unsaved |= changed
        ended = run.state in TERMINAL_RUN_STATES
        # An ended run is checkpointed at once: its journal is then purged whole (`compact`);
        # no later step would ever checkpoint it.
        if not new and (ended or not self._journals(stored)):
            step.checkpoint = True
            step.tasks = [
                self._record(stored, "task", task_key(run_id, t), run.tasks[t])
                for t in stored.unsaved
            ]
        elif not new:
            step.header = None  # a new leader finds the run by its header as it is
        await self._send_entry(pipeline, step)
        return step

    async def _store_beside(
        self, pipeline: PublishPipeline, run_id: str, events: Sequence[bytes]
    ) -> list[int]:
        """Store `events` beside the run's journal; their sequences, in order."""
        subject = subjects.journal_events_subject(run_id)
        pending = [await pipeline.publish(subject, event) for event in events]
        return [ack.seq for ack in await pipeline.all_stored(pending, 10)]

    def _journals(self, stored: StoredRun) -> bool:
        """Whether the run's journal may grow by one more step before a checkpoint."""
        return (
            stored.entries < self.policy.max_entries
            and time.monotonic() - stored.checkpointed_at < self.policy.max_age
        )

    def _entries(
        self,
        header: Run,
        tasks: dict[str, Task],
        events: Sequence[bytes],
        outbox: list[int],
        stored: StoredRun,
    ) -> list[bytes]:
        """The step's journal entry, as several when one would pass `max_entry_bytes`; its
        events (or `outbox`) go in the last, or in one of their own when they would take the
        last past the limit (a task record near the server's limit fills an entry alone)."""
        step = stored.journal_last
        raw = [msgspec.Raw(event) for event in events]
        whole = encode(JournalEntry(header, tasks, step, events=raw, outbox=outbox))
        if len(whole) <= self.policy.max_entry_bytes:
            return [whole]
        budget = self.policy.max_entry_bytes - len(encode(JournalEntry(header, {}, step, True)))
        parts: list[dict[str, Task]] = [{}]
        size = 0
        for task_id, task in tasks.items():
            length = len(task_id) + len(encode(task)) + 4  # "id":{...},
            if parts[-1] and size + length > budget:
                parts.append({})
                size = 0
            parts[-1][task_id] = task
            size += length
        entries = [encode(JournalEntry(header, part, step, True)) for part in parts]
        last = encode(JournalEntry(header, parts[-1], step, False, raw, outbox))
        if len(last) <= self.policy.max_entry_bytes:
            entries[-1] = last
        else:
            entries.append(encode(JournalEntry(header, {}, step, False, raw, outbox)))
        return entries

    def _record(
        self, stored: StoredRun, kind: WriteKind, key: str, value: msgspec.Struct
    ) -> PendingWrite:
        return PendingWrite(stored, kind, key, encode(value), stored.revisions.get(key, 0))

    async def _send_entry(self, pipeline: PublishPipeline, step: StepWrite) -> None:
        """Send the step's next journal entry, fenced by the sequence of the run's last one."""
        stored = step.stored
        payload = step.entries.pop(0)
        subject = subjects.journal_subject(stored.run.run_id)
        step.sent = PendingWrite(stored, "journal", subject, payload, stored.journal_last)
        await self._publish(pipeline, step.sent)

    async def _publish(self, pipeline: PublishPipeline, write: PendingWrite) -> None:
        subject = write.key if write.kind == "journal" else self._prefix + write.key
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(write.expected)}
        write.sent = await pipeline.publish(subject, write.payload, headers)

    async def send_entries(
        self, pipeline: PublishPipeline, steps: list[StepWrite], timeout: float = 10.0
    ) -> None:
        """Send the further entries of the steps too big for one, each once the one before it is
        stored: on return, every step's last entry is sent (not necessarily stored). A step's
        events go out only then: it is loaded only once its last entry is stored."""
        while waiting := [step for step in steps if step.entries]:
            await self._stored(pipeline, [step.sent for step in waiting if step.sent], timeout)
            for step in waiting:
                step.sent = None
                await self._send_entry(pipeline, step)

    async def entries_stored(
        self, pipeline: PublishPipeline, steps: list[StepWrite], timeout: float = 10.0
    ) -> None:
        """Send the further entries of the steps too big for one, and wait until every step's
        last entry is stored: `StaleRevision` if one was refused as out of date (its writer
        lost its lease), `TimeoutError` if the server did not answer in time."""
        await self.send_entries(pipeline, steps, timeout)
        if last := [step.sent for step in steps if step.sent]:
            await self._stored(pipeline, last, timeout)
        for step in steps:
            step.sent = None

    async def confirm(
        self,
        pipeline: PublishPipeline,
        steps: list[StepWrite],
        timeout: float = 10.0,
        before_headers: Callable[[], None] = lambda: None,
    ) -> list[StoredRun]:
        """Write the rest of the steps `save` started and wait until all of it is stored: the
        further entries of a step too big for one (each fenced by the one before), then the
        checkpoints' tasks, then the headers; returns the runs checkpointed (`compact` their
        journals). `StaleRevision` if a write was refused as out of date, `TimeoutError` if the
        server did not answer in time (the writes may or may not have landed).

        `before_headers` runs just before the headers are sent and may raise to stop there: a
        new run's header is not fenced by any earlier write, so the writer checks that it
        still may write (its lease) as late as it can."""
        await self.entries_stored(pipeline, steps, timeout)
        tasks = [write for step in steps if step.checkpoint for write in step.tasks]
        if tasks:  # most steps write no checkpoint (and no header): they skip the awaits
            for write in tasks:
                await self._publish(pipeline, write)
            await self._stored(pipeline, tasks, timeout)
        headers = [self._header(step) for step in steps if step.header is not None]
        if headers:
            before_headers()
            for write in headers:
                await self._publish(pipeline, write)
            await self._stored(pipeline, headers, timeout)
        checkpointed = [write.stored for write in headers if write.kind == "checkpoint"]
        for stored in checkpointed:
            stored.checkpoint_seq = stored.run.journal_seq = stored.journal_last
            stored.unsaved.clear()
            stored.entries = 0
            stored.checkpointed_at = time.monotonic()
        return checkpointed

    def _header(self, step: StepWrite) -> PendingWrite:
        """A checkpoint's header names the step's last entry: everything up to it is in KV."""
        stored = step.stored
        assert step.header is not None
        seq = stored.journal_last if step.checkpoint else stored.checkpoint_seq
        header = msgspec.structs.replace(step.header, journal_seq=seq)
        kind: WriteKind = "checkpoint" if step.checkpoint else "header"
        return self._record(stored, kind, header_key(stored.run.run_id), header)

    @staticmethod
    async def _stored(
        pipeline: PublishPipeline, writes: list[PendingWrite], timeout: float
    ) -> None:
        outcomes = await pipeline.wait([write.sent for write in writes if write.sent], timeout)
        first_error: BaseException | None = None
        for write, outcome in zip(writes, outcomes, strict=True):
            stored = write.stored
            if isinstance(outcome, PubAck):
                if write.kind == "journal":
                    stored.journal_last = outcome.seq
                    stored.entries += 1
                else:
                    stored.revisions[write.key] = outcome.seq
            elif isinstance(outcome, PublishError) and outcome.err_code in WRONG_LAST_SEQUENCE:
                where = subjects.JOURNAL_STREAM if write.kind == "journal" else subjects.RUNS_BUCKET
                raise StaleRevision(where, write.key, write.expected) from outcome
            elif first_error is None:
                first_error = outcome
        if first_error is not None:
            raise first_error

    async def compact(self, stored: StoredRun) -> None:
        """Purge the journal entries the run's last checkpoint includes, all but the last (the
        next entry names its sequence), or all of them once the run ended (none comes next).
        Events stored beside entries go too, but for those of the run's latest step that had
        any (a step's events are stored before the next step is taken)."""
        ended = stored.run.state in TERMINAL_RUN_STATES
        if stored.checkpoint_seq <= 1 and not ended:
            return
        run_id = stored.run.run_id
        keep_from = stored.checkpoint_seq + 1 if ended else stored.checkpoint_seq
        purges = [(subjects.journal_subject(run_id), keep_from)]
        if ended or stored.outbox_from:  # (most runs never store events beside their journal)
            keep_events = keep_from if ended else stored.outbox_from
            purges.append((subjects.journal_events_subject(run_id), keep_events))
        for subject, seq in purges:
            try:
                await self._js.purge_stream(subjects.JOURNAL_STREAM, subject=subject, seq=seq)
            except (nats.errors.Error, TimeoutError) as exc:  # the next checkpoint purges them
                log.warning("run %s: purging its journal failed: %s", run_id, exc)

    async def new_run(self, run: Run) -> StoredRun:
        """A new run, to be saved: its journal starts after whatever entries its subject still
        holds, left by a submission of the same id that stopped before its header was written.
        Its first entry is fenced by the last of them, and loading it ignores them (its header
        names them as checkpointed); its first checkpoint purges them. They used to be purged
        here, but nothing fences a purge: a deposed leader's late purge could remove its
        successor's entries of a run submitted again."""
        try:
            last = await self._js.get_last_msg(
                subjects.JOURNAL_STREAM, subjects.journal_subject(run.run_id)
            )
        except NotFoundError:
            return StoredRun(run)
        run.journal_seq = last.seq or 0
        return StoredRun(run, journal_last=run.journal_seq, checkpoint_seq=run.journal_seq)
