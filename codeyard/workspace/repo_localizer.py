"""Giving a role's handler the run's code on this machine, whichever machine it runs on.

Work items name the run's code as a snapshot in the object store (`RepoRef.bundles`). Before the
handler sees an item, `RepoLocalizer` makes sure the snapshot is in this worker's cache and
points `RepoRef.snapshot` at the cached repository, so roles only ever open local repositories
(`codeyard.agents.working_copy`). Items without a snapshot (a dry run, or a repository on a
shared disk) pass unchanged.

Workers only read the object store: a coder's result carries its patch inline whatever its size,
and the coordinator stores a large one (`codeyard.workspace.patch_store`).
"""

from __future__ import annotations

import contextlib

import msgspec

from codeyard.bus.worker import GiveUp, Handler, RetryLater
from codeyard.schemas import Result, ReviewRequest, TestRequest, WorkItem
from codeyard.schemas.model import RepoRef
from codeyard.workspace.patch_store import PatchMissing, by_reference, inline
from codeyard.workspace.snapshot_cache import SnapshotCache
from codeyard.workspace.snapshots import SnapshotError, SnapshotMissing


class RepoLocalizer:
    """Also fetches a work item's patch stored in the object store, for the handler to see it
    whole."""

    def __init__(self, handler: Handler, cache: SnapshotCache) -> None:
        self.handler = handler
        self.cache = cache

    async def __call__(self, item: WorkItem) -> Result:
        if isinstance(item, TestRequest | ReviewRequest) and by_reference(item.patch):
            try:
                item = msgspec.structs.replace(
                    item, patch=await inline(self.cache.store, item.patch)
                )
            except PatchMissing as exc:
                raise GiveUp(str(exc)) from exc
        return await self._with_local_repo(item)

    async def _with_local_repo(self, item: WorkItem) -> Result:
        repo: RepoRef = item.repo
        async with contextlib.AsyncExitStack() as using:
            if repo.bundles is not None:
                try:
                    # held while the handler runs: its checkouts borrow the cached repository
                    local = await using.enter_async_context(self.cache.using(repo.bundles))
                except SnapshotMissing as exc:  # gone from the store: no retry brings it back
                    raise GiveUp(f"the run's code is not in the object store: {exc}") from exc
                except SnapshotError as exc:  # a stalled or damaged download: try again later
                    raise RetryLater(f"cannot fetch the run's code: {exc}") from exc
                localized = msgspec.structs.replace(repo, snapshot=str(local))
                item = msgspec.structs.replace(item, repo=localized)
            return await self.handler(item)
