"""Pruning a worker's snapshot cache: real nats-server, real git, mtimes set back by hand."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.js.object_store import ObjectStore

from codeyard.bus import Bus
from codeyard.bus.topology import DAY
from codeyard.schemas import PlanRequest, PlanResult, Result, WorkItem
from codeyard.schemas.model import RepoRef, SnapshotRef
from codeyard.workspace.cache_pruning import prune_periodically, prune_snapshot_cache
from codeyard.workspace.git import git
from codeyard.workspace.repo_localizer import RepoLocalizer
from codeyard.workspace.snapshot_cache import BUNDLES_USE_LOCK, SnapshotCache
from codeyard.workspace.snapshots import artifact_store, publish_snapshot
from codeyard.workspace.use_lock import in_use
from tests.repositories import one_commit_repo

RETENTION = 7 * DAY
LONG_AGO = time.time() - 30 * DAY


@pytest.fixture
async def store(bus: Bus) -> ObjectStore:
    return await artifact_store(bus.js)


@pytest.fixture
async def snapshot(store: ObjectStore, tmp_path: Path) -> SnapshotRef:
    repo = one_commit_repo(tmp_path / "source", {"app.py": "print('hello')\n"})
    return await publish_snapshot(store, repo, "HEAD")


def last_used_long_ago(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (LONG_AGO, LONG_AGO))


@pytest.fixture
def cache(store: ObjectStore, tmp_path: Path) -> SnapshotCache:
    return SnapshotCache(store, tmp_path / "cache")


@dataclass(frozen=True)
class Cached:
    """What the cache holds of the snapshot: its repository and the bundle it came from."""

    repository: Path
    bundle: Path


@pytest.fixture
async def long_unused(cache: SnapshotCache, snapshot: SnapshotRef) -> Cached:
    """The snapshot fetched into the cache, then neither file used for longer than RETENTION."""
    repository = await cache.prepare(snapshot)
    bundle = cache.bundle_path(snapshot.root)
    last_used_long_ago(repository, bundle)
    return Cached(repository, bundle)


async def gone(path: Path) -> None:
    for _ in range(200):
        if not path.exists():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} is still there")


def prune(cache: SnapshotCache) -> list[Path]:
    return prune_snapshot_cache(cache.root, RETENTION, time.time())


async def test_what_was_not_used_for_the_retention_is_removed_and_fetched_again_when_needed(
    cache: SnapshotCache, long_unused: Cached, snapshot: SnapshotRef, tmp_path: Path
) -> None:
    assert prune(cache) == [long_unused.repository, long_unused.bundle]
    assert not long_unused.repository.exists()
    assert not long_unused.bundle.exists()
    assert list((cache.root / "repos").iterdir()) == []  # no renamed leftover either

    cache.downloaded.clear()
    checkout = await cache.checkout(snapshot, tmp_path / "work")
    assert (checkout / "app.py").read_text() == "print('hello')\n"
    assert cache.downloaded == [snapshot.root.name]


async def test_what_was_used_recently_stays(
    cache: SnapshotCache, long_unused: Cached, snapshot: SnapshotRef
) -> None:
    await cache.prepare(snapshot)  # using the repository again marks it used
    # the bundle is not read again once imported: it is what goes
    assert prune(cache) == [long_unused.bundle]
    assert long_unused.repository.is_dir()

    await cache.prepare(snapshot)
    assert prune(cache) == []


async def test_a_repository_in_use_stays_however_old_and_its_checkout_keeps_working(
    cache: SnapshotCache, store: ObjectStore, snapshot: SnapshotRef, tmp_path: Path
) -> None:
    # a second instance on the same directory stands for another worker process
    other_process = SnapshotCache(store, tmp_path / "cache")
    async with other_process.using(snapshot) as repository:
        work = tmp_path / "work"
        git(tmp_path, "clone", "-q", "--shared", str(repository), str(work))
        last_used_long_ago(repository, cache.bundle_path(snapshot.root))

        removed = prune(cache)
        assert repository not in removed
        assert repository.is_dir()
        # the checkout borrows the repository's objects: it still reads them
        assert "initial" in git(work, "log", "--format=%s", snapshot.head)

    assert prune(cache) == []  # used just now: the block set its mtime
    last_used_long_ago(repository)
    assert prune(cache) == [repository]


async def test_bundles_stay_while_any_is_being_fetched_or_imported(
    cache: SnapshotCache, long_unused: Cached
) -> None:
    async with in_use(cache.root / "locks" / BUNDLES_USE_LOCK):  # another process importing
        assert prune(cache) == [long_unused.repository]
        assert long_unused.bundle.is_file()
    assert prune(cache) == [long_unused.bundle]


async def test_a_worker_keeps_the_repository_of_the_item_it_handles(
    cache: SnapshotCache, snapshot: SnapshotRef
) -> None:
    pruned_meanwhile: list[list[Path]] = []

    async def handler(item: WorkItem) -> Result:
        repository = Path(item.repo.snapshot)
        last_used_long_ago(repository)
        pruned_meanwhile.append(prune(cache))  # another worker process's daily pruning
        assert "initial" in git(repository, "log", "--format=%s", snapshot.head)
        return PlanResult(run_id=item.run_id, tasks=[])

    item = PlanRequest(run_id="r1", goal="g", repo=RepoRef(head=snapshot.head, bundles=snapshot))
    result = await RepoLocalizer(handler, cache)(item)
    assert isinstance(result, PlanResult)
    assert pruned_meanwhile == [[]]
    assert cache.repository(snapshot).is_dir()


async def test_a_worker_prunes_when_it_starts_and_then_periodically(
    cache: SnapshotCache, long_unused: Cached, snapshot: SnapshotRef
) -> None:
    pruning = asyncio.create_task(prune_periodically(cache.root, RETENTION, interval=0.05))
    try:
        await gone(long_unused.repository)
        repository = await cache.prepare(snapshot)  # fetched again, then unused for long
        last_used_long_ago(repository)
        await gone(repository)
    finally:
        pruning.cancel()


def test_an_empty_or_missing_cache_prunes_nothing(tmp_path: Path) -> None:
    assert prune_snapshot_cache(tmp_path / "never-used", RETENTION, time.time()) == []
