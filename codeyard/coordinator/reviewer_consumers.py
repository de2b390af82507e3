"""The durable consumers of plugin reviewers, created by the coordinator as runs need them.

A worker allowed to create its consumer could as well make it a push consumer delivering to a
subject of its choice, and have the server publish work items wherever it likes: plugin
reviewers are not trusted with that. The coordinator, which knows which reviewers a run
needs, creates `review-<name>` (with `ensure_role_consumer`, as a plugin worker allowed to
does: the same configuration, so neither finds the other's in conflict) when the run is
submitted (before it exists: before any of its work is sent), as it takes over open runs, and
as it first sends work to a reviewer (a planner's plan may name reviewers of its own). The
builtin roles' consumers are created at start (`Bus.setup`).

Each consumer is created once per process, and again when the leader finds it gone (deleted by
hand) while an open run needs it: the leader lists `CY_WORK`'s consumers for its metrics every
few seconds (`recreate_missing`). A creation that fails holds up no run: the work waits in
`CY_WORK` (a work queue keeps what no consumer took) while the creation is retried in the
background, a warning logged at each failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext

from codeyard.bus import subjects
from codeyard.bus.topology import Topology, ensure_role_consumer
from codeyard.cancellation import stop_tasks
from codeyard.schemas.model import Run, TaskSpec

log = logging.getLogger(__name__)

# Seconds between attempts at creating a consumer, the last one repeated until it is created.
RETRY_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)
# How long `ensure` waits for a creation before going on without it (it goes on trying): a
# JetStream API request that gets no answer fails after 5 s.
ENSURE_PATIENCE = 6.0


def reviewers_named(run_reviewers: Iterable[str], specs: Iterable[TaskSpec]) -> set[str]:
    """Every reviewer a run may need: its default ones (its tasks yet to be planned need them)
    and those its tasks' specs name."""
    return {*run_reviewers, *(name for spec in specs for name in spec.reviewers)}


def reviewers_of(run: Run) -> set[str]:
    """Every reviewer a run as recorded may need (`reviewers_named`)."""
    return reviewers_named(run.reviewers, (task.spec for task in run.tasks.values()))


@dataclass
class _Creation:
    task: asyncio.Task[None]
    tried: asyncio.Event  # set once its first attempt is over


class ReviewerConsumers:
    """Creates the consumers of plugin reviewers (`review.<name>`) once each; builtin roles
    are left alone."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self._js = js
        self._topology = topology
        self._retry_delays = tuple(retry_delays) or RETRY_DELAYS
        self.created: set[str] = set()
        self._created_at: dict[str, float] = {}  # by role, on the event loop's clock
        self._creating: dict[str, _Creation] = {}

    def want(self, roles: Iterable[str]) -> None:
        """Start creating, in the background, the consumers of the plugin reviewers among
        `roles` not created yet."""
        self._start(roles)

    async def ensure(self, roles: Iterable[str], patience: float = ENSURE_PATIENCE) -> bool:
        """Create the consumers of the plugin reviewers among `roles`, waiting up to `patience`
        seconds for a first attempt at each; whether all exist then. Those that do not are
        tried again in the background."""
        creations = self._start(roles)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                for creation in creations:
                    await creation.tried.wait()
        return all(creation.task.done() for creation in creations)

    def recreate_missing(
        self, listed: set[str], listed_since: float, needed: Iterable[str]
    ) -> None:
        """Create again the consumers of the `needed` reviewers that `listed` (the names of
        `CY_WORK`'s consumers, read from `listed_since` on) lacks though they were created
        before that read began."""
        missing = [
            role
            for role in set(needed) & self.created
            if subjects.consumer_name(role) not in listed
            and self._created_at.get(role, listed_since) < listed_since
        ]
        for role in sorted(missing):
            log.warning("the consumer of %s is gone (deleted?): creating it again", role)
            self.created.discard(role)
        self._start(missing)

    async def close(self) -> None:
        """Stop the creations still being tried."""
        await stop_tasks([creation.task for creation in self._creating.values()])
        self._creating.clear()

    def _start(self, roles: Iterable[str]) -> list[_Creation]:
        """The creations of the consumers of the plugin reviewers among `roles` that do not
        exist yet, started if they were not."""
        creations = []
        for role in roles:
            if role in subjects.BUILTIN_ROLES or role in self.created:
                continue
            creation = self._creating.get(role)
            if creation is None:
                tried = asyncio.Event()
                task = asyncio.create_task(self._create(role, tried), name=f"consumer of {role}")
                creation = self._creating[role] = _Creation(task, tried)
            creations.append(creation)
        return creations

    async def _create(self, role: str, tried: asyncio.Event) -> None:
        """Create `role`'s consumer, trying until it is created (or this is cancelled); `tried`
        is set once the first attempt is over."""
        try:
            for attempt in itertools.count():
                try:
                    await ensure_role_consumer(self._js, role, self._topology)
                except Exception as exc:  # the server refused, or did not answer: try again
                    tried.set()
                    delay = self._retry_delays[min(attempt, len(self._retry_delays) - 1)]
                    log.warning(
                        "cannot create the consumer of %s yet, its work waits in %s (next try "
                        "in %g s): %s",
                        role,
                        subjects.WORK_STREAM,
                        delay,
                        _described(exc),
                    )
                    await asyncio.sleep(delay)
                else:
                    self.created.add(role)
                    self._created_at[role] = asyncio.get_running_loop().time()
                    log.info("created the consumer of %s", role)
                    return
        finally:
            tried.set()
            self._creating.pop(role, None)


def _described(exc: Exception) -> str:
    """nats-py's errors often have an empty `str` (a timeout): name the error then."""
    return str(exc) or type(exc).__name__
