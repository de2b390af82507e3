"""A coordinator dying between two writes of one step, for tests of what the next leader loads."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors

from codeyard.bus import Bus
from codeyard.bus.pipeline import Pending, PubAck, PublishPipeline
from codeyard.bus.store import EXPECTED_LAST_SUBJECT_SEQUENCE
from codeyard.bus.subjects import RUNS_BUCKET, ctl_subject
from codeyard.coordinator.run_store import header_key
from codeyard.schemas import SubmitRun, encode


class DiesBefore(PublishPipeline):
    """Publishes like a coordinator's pipeline until its next write to `subject` once `armed`:
    there its coordinator dies (the step's earlier writes are stored, nothing after them is).
    It dies once; a coordinator that carries on is its successor. With `prefix`, at its next
    write to a subject starting with `subject`; with `nth`, at its nth write there once armed.
    """

    def __init__(
        self, bus: Bus, subject: str, *, armed: bool = True, prefix: bool = False, nth: int = 1
    ) -> None:
        super().__init__(bus.nc)
        self.subject = subject
        self.prefix = prefix
        self.armed = armed
        self.nth = nth
        self.died = False

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        here = subject.startswith(self.subject) if self.prefix else subject == self.subject
        if self.armed and not self.died and here:
            self.nth -= 1
            if not self.nth:
                self.died = True
                raise ConnectionError("the coordinator died here")
        return await super().publish(subject, payload, headers)


def dies_before_the_header(bus: Bus, run_id: str) -> DiesBefore:
    return DiesBefore(bus, f"$KV.{RUNS_BUCKET}.{header_key(run_id)}")


async def submit_until_it_dies(bus: Bus, submission: SubmitRun, fault: DiesBefore) -> None:
    """Submit until the coordinator dies in the step that takes the submission (asked again
    while it does not listen yet); it never answers."""
    for _ in range(100):
        with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await bus.nc.request(ctl_subject("submit"), encode(submission), timeout=3)
        if fault.died:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the coordinator never took the submission")


class LosesEvents(PublishPipeline):
    """Publishes like a coordinator's pipeline, but once `armed` the first event it is given
    whose encoding holds `marker` is lost as the server would lose it: taken, never stored, its
    publish failing as the connection drops. The step's other writes (its journal entry) land."""

    def __init__(self, bus: Bus, marker: bytes = b"", *, armed: bool = True) -> None:
        super().__init__(bus.nc)
        self.marker = marker
        self.armed = armed
        self.lost: bytes | None = None

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        here = subject.startswith("cy.events.") and self.marker in payload
        if self.armed and self.lost is None and here:
            self.lost = payload
            lost: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
            lost.set_exception(ConnectionError("the server stopped before storing it"))
            return Pending("lost", lost)
        return await super().publish(subject, payload, headers)


class RefusesAnEntry(PublishPipeline):
    """Publishes like a coordinator's pipeline, but once `armed` its next journal entry on
    `subject` is fenced by a sequence the journal is not at, as a leader that was paused past
    its lease finds when it wakes (its successor wrote since): the server refuses the entry,
    and the step it holds never happened."""

    def __init__(self, bus: Bus, subject: str, *, armed: bool = True) -> None:
        super().__init__(bus.nc)
        self.subject = subject
        self.armed = armed
        self.refused = False
        self.told: list[bytes] = []  # events published after the refused entry, before another

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        if subject == self.subject and self.refused:
            self.armed = False  # the step's next entry: what follows is another step's
        elif subject.startswith("cy.events.") and self.armed and self.refused:
            self.told.append(payload)
        if self.armed and not self.refused and subject == self.subject and headers:
            self.refused = True
            stale = int(headers[EXPECTED_LAST_SUBJECT_SEQUENCE]) + 1_000_000
            headers = headers | {EXPECTED_LAST_SUBJECT_SEQUENCE: str(stale)}
        return await super().publish(subject, payload, headers)
