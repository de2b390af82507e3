"""Runs in the `cy_runs` KV bucket, and a journal of their latest changes.

Keys: `<run_id>` holds the `Run` with `tasks` empty (the header); `<run_id>.<task_id>` holds each
`Task`. Splitting the graph by task keeps each write small (a 10,000-task run would not fit in
one NATS message).

Writing each changed task to KV at every step cost about five writes per task. Instead, one
step's changes to a run are one entry of the run's journal (`cy.journal.<run_id>`): its header
and the tasks that changed. From time to time a step writes a *checkpoint* instead: the header
and every task changed since the last checkpoint, to KV, the header naming the last journal
entry they include (`Run.journal_seq`); the entries before it are then purged. Loading a run
reads its KV records and applies the journal entries after that one, in order.

A run's header is also written (not as a checkpoint) when the run is new, so that a new leader
finds it, and when it ends, so that a new leader leaves it closed. A step checkpoints instead
of journaling when its entry would be too big, or when the run's journal reached
`CheckpointPolicy`'s length or age, which bounds what loading a run replays.

Every write is revision-checked: a journal entry names the sequence of the run's previous one,
a KV write the revision it replaces. A coordinator that lost its lease cannot write over its
successor: its writes fail with `StaleRevision`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
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
from codeyard.bus.store import WRONG_LAST_SEQUENCE, StaleRevision
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas.codec import decode, encode
from codeyard.schemas.model import Run, Task

log = logging.getLogger(__name__)

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


class JournalEntry(msgspec.Struct, frozen=True):
    """One step's changes to a run: its header (tasks left out) and the tasks that changed."""

    header: Run
    tasks: dict[str, Task]


@dataclass(frozen=True)
class CheckpointPolicy:
    max_entry_bytes: int = 512 * 1024  # a step whose entry would be bigger checkpoints
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
    checkpointed_at: float = field(default_factory=time.monotonic)


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
    sent: Pending | None = None  # None: not published yet (a header waits for the rest)


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
        """Every run's header as of its last checkpoint (tasks left out), oldest first."""
        runs = [decode(value, Run) async for _, value, _ in self._latest("*")]  # one token: headers
        return sorted(runs, key=lambda run: run.created_at)

    def _latest(self, keys: str) -> AsyncIterator[tuple[str, bytes, int]]:
        return latest_entries(self._js, subjects.RUNS_BUCKET, keys)

    async def _replay(self, stored: StoredRun) -> None:
        """Apply the journal entries written after the run's last checkpoint."""
        subject = subjects.journal_subject(stored.run.run_id)
        try:
            last = await self._js.get_last_msg(subjects.JOURNAL_STREAM, subject)
        except NotFoundError:
            return
        stored.journal_last = last.seq or 0
        tasks = stored.run.tasks
        if stored.journal_last <= stored.checkpoint_seq:
            return
        async for sequence, data in messages_after(
            self._js, subjects.JOURNAL_STREAM, subject, stored.checkpoint_seq
        ):
            entry = decode(data, JournalEntry)
            stored.run = msgspec.structs.replace(entry.header, tasks=tasks)
            tasks.update(entry.tasks)
            stored.unsaved.update(entry.tasks)
            stored.entries += 1
            stored.journal_last = max(stored.journal_last, sequence)

    # --- writing ------------------------------------------------------------------------------

    async def save(
        self, stored: StoredRun, task_ids: Iterable[str], pipeline: PublishPipeline
    ) -> list[PendingWrite]:
        """Start making the run's header and the given tasks durable through `pipeline`, as a
        journal entry or a checkpoint; `confirm` the writes before acting on them.

        A header is written only once the rest of the step is stored: a checkpoint's header
        names the journal entries it includes, which must not be skipped on load before every
        task the checkpoint writes is in KV; and a new or ended run's header must not announce
        a journal entry that never landed."""
        run, run_id = stored.run, stored.run.run_id
        changed = set(task_ids)
        header = msgspec.structs.replace(run, tasks={}, journal_seq=stored.checkpoint_seq)
        writes: list[PendingWrite] = []
        if self._journals(stored):
            entry = encode(JournalEntry(header, {t: run.tasks[t] for t in changed}))
            if len(entry) <= self.policy.max_entry_bytes:
                stored.unsaved |= changed
                subject = subjects.journal_subject(run_id)
                writes.append(PendingWrite(stored, "journal", subject, entry, stored.journal_last))
                if header_key(run_id) not in stored.revisions or run.state in TERMINAL_RUN_STATES:
                    writes.append(self._record(stored, "header", header_key(run_id), header))
        if not writes:
            for task_id in changed | stored.unsaved:
                writes.append(
                    self._record(stored, "task", task_key(run_id, task_id), run.tasks[task_id])
                )
            header.journal_seq = stored.journal_last
            writes.append(self._record(stored, "checkpoint", header_key(run_id), header))
        for write in writes:
            if write.kind in ("journal", "task"):
                await self._publish(pipeline, write)
        return writes

    def _journals(self, stored: StoredRun) -> bool:
        """Whether this step's changes may go to the journal rather than into a checkpoint."""
        return (
            stored.entries < self.policy.max_entries
            and time.monotonic() - stored.checkpointed_at < self.policy.max_age
        )

    def _record(
        self, stored: StoredRun, kind: WriteKind, key: str, value: msgspec.Struct
    ) -> PendingWrite:
        return PendingWrite(stored, kind, key, encode(value), stored.revisions.get(key, 0))

    async def _publish(self, pipeline: PublishPipeline, write: PendingWrite) -> None:
        subject = write.key if write.kind == "journal" else self._prefix + write.key
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(write.expected)}
        write.sent = await pipeline.publish(subject, write.payload, headers)

    async def confirm(
        self, pipeline: PublishPipeline, writes: list[PendingWrite], timeout: float = 10.0
    ) -> list[StoredRun]:
        """Wait until every write is stored (the headers are sent once the rest is) and note
        where each run's records now stand; the runs checkpointed (`compact` their journals).
        `StaleRevision` if a write was refused as out of date, `TimeoutError` if the server did
        not answer in time (the writes may or may not have landed)."""
        await self._stored(pipeline, [write for write in writes if write.sent], timeout)
        headers = [write for write in writes if not write.sent]
        for write in headers:
            await self._publish(pipeline, write)
        await self._stored(pipeline, headers, timeout)
        checkpointed = [write.stored for write in headers if write.kind == "checkpoint"]
        for stored in checkpointed:
            stored.checkpoint_seq = stored.journal_last
            stored.unsaved.clear()
            stored.entries = 0
            stored.checkpointed_at = time.monotonic()
        return checkpointed

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
        """Purge the journal entries the run's last checkpoint includes, all but the last: the
        next entry names its sequence."""
        if stored.checkpoint_seq <= 1:
            return
        subject = subjects.journal_subject(stored.run.run_id)
        try:
            await self._js.purge_stream(
                subjects.JOURNAL_STREAM, subject=subject, seq=stored.checkpoint_seq
            )
        except (nats.errors.Error, TimeoutError) as exc:  # the next checkpoint purges them
            log.warning("run %s: purging its journal failed: %s", stored.run.run_id, exc)

    async def forget_journal(self, run_id: str) -> None:
        """Purge the journal of a run whose header is not stored: left by a submission that
        stopped before its header was written, it belongs to no run."""
        subject = subjects.journal_subject(run_id)
        await self._js.purge_stream(subjects.JOURNAL_STREAM, subject=subject)
