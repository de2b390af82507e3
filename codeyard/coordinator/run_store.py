"""Runs in the `cy_runs` KV bucket: one key for the run header, one per task.

Splitting the graph by task keeps each write small (a 10,000-task run would not fit in one
NATS message) and lets a batch of results write only the tasks it touched. Every write names
the revision it replaces, so a coordinator that lost its lease cannot overwrite its successor:
its writes fail with `StaleRevision`.

Keys: `<run_id>` holds the `Run` with `tasks` empty (written with every change of the run);
`<run_id>.<task_id>` holds each `Task`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from codeyard.bus import subjects
from codeyard.bus.kv_scan import latest_entries
from codeyard.bus.pipeline import Pending, PubAck, PublishError, PublishPipeline
from codeyard.bus.store import WRONG_LAST_SEQUENCE, StaleRevision
from codeyard.schemas.codec import decode, encode
from codeyard.schemas.model import Run, Task

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


@dataclass
class StoredRun:
    """A run as loaded, with the revision of each of its keys (0: not written yet)."""

    run: Run
    revisions: dict[str, int] = field(default_factory=dict)


def header_key(run_id: str) -> str:
    return run_id


def task_key(run_id: str, task_id: str) -> str:
    return f"{run_id}.{task_id}"


class RunStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv
        self._prefix = f"$KV.{subjects.RUNS_BUCKET}."

    @classmethod
    async def open(cls, js: JetStreamContext) -> RunStore:
        return cls(js, await js.key_value(subjects.RUNS_BUCKET))

    async def load(self, run_id: str, *, tasks: bool = False) -> StoredRun | None:
        """One run's header, and with `tasks` every task too."""
        try:
            entry = await self._kv.get(header_key(run_id))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        stored = StoredRun(decode(entry.value, Run), {entry.key: entry.revision})
        if tasks:
            async for key, value, revision in self._latest(f"{run_id}.>"):
                task_id = key.partition(".")[2]
                stored.run.tasks[task_id] = decode(value, Task)
                stored.revisions[key] = revision
        return stored

    async def headers(self) -> list[Run]:
        """Every run's header (tasks left out), oldest first."""
        runs = [decode(value, Run) async for _, value, _ in self._latest("*")]  # one token: headers
        return sorted(runs, key=lambda run: run.created_at)

    def _latest(self, keys: str) -> AsyncIterator[tuple[str, bytes, int]]:
        return latest_entries(self._js, subjects.RUNS_BUCKET, keys)

    async def save(
        self, stored: StoredRun, task_ids: Iterable[str], pipeline: PublishPipeline
    ) -> list[PendingWrite]:
        """Start writing the run's header and the given tasks through `pipeline`; `confirm`
        them before acting on the writes."""
        run = stored.run
        writes = [(header_key(run.run_id), encode(msgspec.structs.replace(run, tasks={})))]
        writes += [(task_key(run.run_id, t), encode(run.tasks[t])) for t in task_ids]
        pending = []
        for key, value in writes:
            expected = stored.revisions.get(key, 0)
            headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected)}
            sent = await pipeline.publish(self._prefix + key, value, headers)
            pending.append(PendingWrite(stored, key, expected, sent))
        return pending


@dataclass(frozen=True)
class PendingWrite:
    stored: StoredRun
    key: str
    expected: int
    sent: Pending


async def confirm(
    pipeline: PublishPipeline, writes: list[PendingWrite], timeout: float = 10.0
) -> None:
    """Wait until every write is stored and note the new revisions. `StaleRevision` if one was
    refused as out of date, `TimeoutError` if the server did not answer in time (the writes
    may or may not have landed)."""
    outcomes = await pipeline.wait([write.sent for write in writes], timeout)
    first_error: BaseException | None = None
    for write, outcome in zip(writes, outcomes, strict=True):
        if isinstance(outcome, PubAck):
            write.stored.revisions[write.key] = outcome.seq
        elif isinstance(outcome, PublishError) and outcome.err_code in WRONG_LAST_SEQUENCE:
            raise StaleRevision(subjects.RUNS_BUCKET, write.key, write.expected) from outcome
        elif first_error is None:
            first_error = outcome
    if first_error is not None:
        raise first_error
