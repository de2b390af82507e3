"""Garbage collection of the `cy_artifacts` store, run by the leading coordinator.

The decision is `codeyard.workspace.retention.sweep`; this module lists the store, asks the
coordinator which runs are open, deletes, logs and counts. Only the leader collects: it is the
one that knows every open run (in memory), and it stops deleting the moment it stops leading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus.subjects import ARTIFACTS_BUCKET
from codeyard.bus.topology import DAY
from codeyard.observability import metrics
from codeyard.schemas.messages import ArtifactsCollected, StoredArtifact
from codeyard.schemas.model import Run
from codeyard.workspace.artifact_ages import list_artifacts, modified_at
from codeyard.workspace.retention import is_expired, kind_of, referenced_artifacts, sweep

log = logging.getLogger(__name__)

COLLECT_INTERVAL = 3600.0
FIRST_COLLECTION_AFTER = 60.0  # after becoming leader: not in the rush of resuming the runs


class ArtifactCollector:
    """`open_runs` gives the runs that must lose nothing; `leading` whether this coordinator
    still leads (a collection that outlives its leadership stops deleting)."""

    def __init__(
        self,
        store: ObjectStore,
        js: JetStreamContext,
        open_runs: Callable[[], Iterable[Run]],
        leading: Callable[[], bool],
        retention: float = 30 * DAY,
        bucket: str = ARTIFACTS_BUCKET,
    ) -> None:
        self.store = store
        self.js = js
        self.open_runs = open_runs
        self.leading = leading
        self.retention = timedelta(seconds=retention)
        self.bucket = bucket
        self._one_at_a_time = asyncio.Lock()

    async def collect(self, dry_run: bool = False) -> ArtifactsCollected:
        """Delete (with `dry_run`: only name) what no open run uses and the retention let go."""
        async with self._one_at_a_time:
            stored = await list_artifacts(self.store, self.js, self.bucket)
            # Read after the listing: whatever an open run came to need since is in neither,
            # or was refreshed by its publisher (a new reference always comes with a refresh).
            referenced = referenced_artifacts(self.open_runs())
            decision = sweep(stored, referenced, datetime.now(UTC), self.retention)
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
            return ArtifactsCollected(
                dry_run=dry_run,
                retention_seconds=self.retention.total_seconds(),
                deleted=deleted,
                referenced=decision.referenced,
                recent=decision.recent,
            )

    async def _delete(self, found: StoredArtifact) -> bool:
        if not self.leading():
            return False
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
