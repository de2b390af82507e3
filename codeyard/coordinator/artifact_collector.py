"""Garbage collection of the `cy_artifacts` store and of the integration clones on the
coordinator's disk, run by the leading coordinator.

The decisions are `codeyard.workspace.retention.sweep` and
`codeyard.workspace.clone_retention.sweep_clones`; this module lists the store and the clones,
asks the coordinator which runs are open (and which are recorded at all), deletes, logs and
counts. Only the leader collects: it is the one that knows every open run (in memory), and it
stops deleting the moment it stops leading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus.subjects import ARTIFACTS_BUCKET
from codeyard.bus.topology import DAY
from codeyard.observability import metrics
from codeyard.schemas.messages import ArtifactsCollected, StoredArtifact, StoredClone
from codeyard.schemas.model import Run
from codeyard.workspace.artifact_ages import list_artifacts, modified_at
from codeyard.workspace.clone_retention import CloneSweep, ExpiredClone, sweep_clones
from codeyard.workspace.integration_clones import (
    CloneOnDisk,
    last_change,
    list_clones,
    remove_clone,
    remove_leftovers,
    size_on_disk,
)
from codeyard.workspace.retention import is_expired, kind_of, referenced_artifacts, sweep

log = logging.getLogger(__name__)

COLLECT_INTERVAL = 3600.0
FIRST_COLLECTION_AFTER = 60.0  # after becoming leader: not in the rush of resuming the runs


class ArtifactCollector:
    """`open_runs` gives the runs that must lose nothing; `leading` whether this coordinator
    still leads (a collection that outlives its leadership stops deleting).

    With `clones` (`GitIntegrator.root`) it also removes integration clones, and then needs
    `recorded_runs`: every run of `cy_runs` (headers are enough), to tell a run that ended
    from one that no longer exists."""

    def __init__(
        self,
        store: ObjectStore,
        js: JetStreamContext,
        open_runs: Callable[[], Iterable[Run]],
        leading: Callable[[], bool],
        retention: float = 30 * DAY,
        bucket: str = ARTIFACTS_BUCKET,
        clones: Path | None = None,
        recorded_runs: Callable[[], Awaitable[Iterable[Run]]] | None = None,
    ) -> None:
        if clones is not None and recorded_runs is None:
            raise ValueError("collecting integration clones needs the recorded runs")
        self.store = store
        self.js = js
        self.open_runs = open_runs
        self.leading = leading
        self.retention = timedelta(seconds=retention)
        self.bucket = bucket
        self.clones = clones
        self.recorded_runs = recorded_runs
        self._one_at_a_time = asyncio.Lock()
        # Held by each deletion from its last look at the object's age to the delete, and by
        # whoever reuses an object of the store while recording a reference to it (the leading
        # coordinator storing a coder's patch): the object is either deleted first (and stored
        # again) or seen refreshed (and kept).
        self.deleting = asyncio.Lock()

    async def collect(self, dry_run: bool = False) -> ArtifactsCollected:
        """Delete (with `dry_run`: only name) what no open run uses and the retention let go."""
        async with self._one_at_a_time:
            stored = await list_artifacts(self.store, self.js, self.bucket)
            on_disk = await asyncio.to_thread(list_clones, self.clones) if self.clones else []
            # Read after the listings: whatever an open run came to need since is in neither,
            # or was refreshed by its publisher (a new reference always comes with a refresh);
            # a clone made since is not listed, one being made is too new to go.
            open_runs = list(self.open_runs())
            referenced = referenced_artifacts(open_runs)
            decision = sweep(stored, referenced, datetime.now(UTC), self.retention)
            clones = await self._sweep_clones(on_disk, frozenset(r.run_id for r in open_runs))
            if dry_run:
                deleted = list(decision.expired)
            else:
                deleted = [found for found in decision.expired if await self._delete(found)]
            if deleted and not dry_run:
                log.info(
                    "garbage collection deleted %d objects (%d bytes) from %s; kept %d used by "
                    "open runs, %d younger than %s",
                    len(deleted),
                    sum(found.size for found in deleted),
                    self.bucket,
                    decision.referenced,
                    decision.recent,
                    self.retention,
                )
            removed = await self._remove_clones(clones.expired, dry_run)
            return ArtifactsCollected(
                dry_run=dry_run,
                retention_seconds=self.retention.total_seconds(),
                deleted=deleted,
                referenced=decision.referenced,
                recent=decision.recent,
                clones=removed,
                open_clones=clones.open,
                recent_clones=clones.recent,
            )

    async def _delete(self, found: StoredArtifact) -> bool:
        if not self.leading():
            return False
        async with self.deleting:
            # Reused since the listing (a publisher found it and refreshed it): it stays.
            current = await modified_at(self.js, self.bucket, found.name)
            if current is None or not is_expired(current, datetime.now(UTC), self.retention):
                return False
            try:
                await self.store.delete(found.name)
            except NotFoundError:  # deleted meanwhile, by another collection
                return False
        metrics.ARTIFACTS_DELETED.labels(kind_of(found.name)).inc()
        metrics.ARTIFACT_BYTES_DELETED.inc(found.size)
        log.info(
            "deleted %s (%d bytes, unused since %s)",
            found.name,
            found.size,
            current.isoformat(timespec="seconds"),
        )
        return True

    async def _sweep_clones(
        self, on_disk: list[CloneOnDisk], open_ids: frozenset[str]
    ) -> CloneSweep:
        if self.recorded_runs is None:
            return CloneSweep(expired=(), open=0, recent=0)
        recorded = {run.run_id: run for run in await self.recorded_runs()}
        return sweep_clones(on_disk, open_ids, recorded, datetime.now(UTC), self.retention)

    async def _remove_clones(
        self, expired: Iterable[ExpiredClone], dry_run: bool
    ) -> list[StoredClone]:
        if self.clones is not None and not dry_run:
            await asyncio.to_thread(remove_leftovers, self.clones)
        removed = []
        for found in expired:
            clone = StoredClone(
                run_id=found.clone.run_id,
                path=str(found.clone.path),
                size=await asyncio.to_thread(size_on_disk, found.clone.path),
                unused_since=found.unused_since,
                run_state=found.run_state,
            )
            if dry_run or await self._remove_clone(found, clone):
                removed.append(clone)
        return removed

    async def _remove_clone(self, found: ExpiredClone, clone: StoredClone) -> bool:
        if not self.leading():
            return False
        if found.run_state is None:
            # No run to go by: one submitted under this id since the listing has it open, or
            # is being prepared, which marks the clone changed.
            if clone.run_id in {run.run_id for run in self.open_runs()}:
                return False
            changed = await asyncio.to_thread(last_change, found.clone.path)
            if changed is None or not is_expired(changed, datetime.now(UTC), self.retention):
                return False
        if not await asyncio.to_thread(remove_clone, found.clone.path):
            return False  # removed meanwhile, by another collection
        metrics.INTEGRATION_CLONES_DELETED.labels(
            "no_run" if clone.run_state is None else "ended"
        ).inc()
        metrics.INTEGRATION_CLONE_BYTES_DELETED.inc(clone.size)
        log.info(
            "deleted %s (%d bytes), the integration clone of run %s: %s since %s",
            clone.path,
            clone.size,
            clone.run_id,
            "no such run, unchanged" if clone.run_state is None else clone.run_state.value,
            clone.unused_since.isoformat(timespec="seconds"),
        )
        return True

    async def collect_periodically(
        self, first_after: float = FIRST_COLLECTION_AFTER, interval: float = COLLECT_INTERVAL
    ) -> None:
        """Collect every `interval` seconds until cancelled; a failure is logged, never raised."""
        await asyncio.sleep(first_after)
        while True:
            try:
                await self.collect()
            except Exception:
                log.exception("garbage collection of %s failed", self.bucket)
            await asyncio.sleep(interval)
