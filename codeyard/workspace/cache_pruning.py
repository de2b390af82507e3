"""Pruning a worker's snapshot cache (`SnapshotCache`): what was not used for longer than the
retention goes, never what is in use.

Use is measured by mtime, which the cache sets each time it uses a repository or a bundle. A
repository goes only when its `.use` lock can be taken exclusively (no handler, no checkout, no
import holds it); bundles only when nobody fetches or imports any (`bundles.use`): a bundle is
named by its content, not by the chain it belongs to. A repository is first renamed away, so a
crash in the middle of removing it never leaves a half repository under its real name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from codeyard.bus.topology import DAY
from codeyard.observability import metrics
from codeyard.workspace.snapshot_cache import BUNDLES_USE_LOCK, use_lock_path
from codeyard.workspace.use_lock import unused

log = logging.getLogger(__name__)

REMOVING_SUFFIX = ".removing"


def unused_for_longer(mtime: float, now: float, retention: float) -> bool:
    return now - mtime > retention


def prune_snapshot_cache(root: Path, retention: float, now: float) -> list[Path]:
    """Remove from the cache at `root` what was last used more than `retention` seconds before
    `now` (a time.time()); the paths removed."""
    return [
        *_prune_repositories(root, retention, now),
        *_prune_bundles(root, retention, now),
    ]


def _stale(path: Path, retention: float, now: float) -> bool:
    try:
        return unused_for_longer(path.stat().st_mtime, now, retention)
    except FileNotFoundError:  # removed meanwhile by another process's pruning
        return False


def _prune_repositories(root: Path, retention: float, now: float) -> list[Path]:
    repos = root / "repos"
    if not repos.is_dir():
        return []
    removed = []
    for leftover in repos.glob(f".*{REMOVING_SUFFIX}"):  # a removal a crash interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    for repository in sorted(repos.glob("*.git")):
        if not _stale(repository, retention, now):
            continue
        chain = repository.name.removesuffix(".git")
        with unused(use_lock_path(root, chain)) as free:
            # checked again under the lock: a user may have finished with it just before
            if not free or not _stale(repository, retention, now):
                continue
            doomed = repository.with_name(f".{repository.name}.{os.getpid()}{REMOVING_SUFFIX}")
            repository.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        metrics.SNAPSHOT_CACHE_PRUNED.labels("repository").inc()
        removed.append(repository)
    return removed


def _prune_bundles(root: Path, retention: float, now: float) -> list[Path]:
    bundles = root / "bundles"
    if not bundles.is_dir():
        return []
    stale = [path for path in sorted(bundles.iterdir()) if _stale(path, retention, now)]
    if not stale:
        return []
    removed = []
    with unused(root / "locks" / BUNDLES_USE_LOCK) as free:
        if not free:  # a fetch or an import is running: next time
            log.debug("snapshot cache %s: bundles in use, not pruned now", root)
            return []
        for path in stale:
            if not _stale(path, retention, now):
                continue
            path.unlink(missing_ok=True)
            # `.name.pid.uuid.part`: a download a crash interrupted
            kind = "partial" if path.name.endswith(".part") else "bundle"
            metrics.SNAPSHOT_CACHE_PRUNED.labels(kind).inc()
            removed.append(path)
    return removed


async def prune_periodically(root: Path, retention: float, interval: float = DAY) -> None:
    """Prune now (a worker starting), then every `interval` seconds, until cancelled; a failure
    is logged, never raised."""
    while True:
        try:
            removed = await asyncio.to_thread(prune_snapshot_cache, root, retention, time.time())
            if removed:
                log.info(
                    "snapshot cache %s: removed %d entries unused for %.1f days: %s",
                    root,
                    len(removed),
                    retention / DAY,
                    ", ".join(path.name for path in removed),
                )
        except Exception:
            log.exception("pruning the snapshot cache %s failed", root)
        await asyncio.sleep(interval)
