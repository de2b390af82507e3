"""Which `cy_artifacts` objects garbage collection deletes: pure decisions, no I/O, no clock.

An object goes only when both hold:

- no open run names it: every bundle of the snapshot chain the run carries (`Run.repo.bundles`,
  the integration head; the chain grows by increments, so it also holds the bundles of the
  earlier heads the run's work items carried) and every offloaded patch of its tasks. Bundles
  are content addressed, so one bundle may belong to a finished and an open run: it stays.
- it was last published, or reused by a publisher that found it already stored, longer than the
  retention ago. This covers what no open run names yet: a coder's patch the coordinator
  stored in a step that then failed (its result comes again, and reuses it), a bundle being
  published for a merge, and the patches of recently finished runs, which their reports still
  show. The coordinator records a patch's reference in the step that stores it; an old patch
  it reuses there is either deleted before (and stored again) or kept, seen refreshed
  (`ArtifactCollector.deleting`).

Only names codeyard writes (`BUNDLE_PREFIX`, `PATCH_PREFIX`) are ever collected: anything else
in the bucket was put there by someone else.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from codeyard.schemas.messages import StoredArtifact
from codeyard.schemas.model import Run
from codeyard.workspace.patch_store import PATCH_PREFIX
from codeyard.workspace.snapshots import BUNDLE_PREFIX

COLLECTED_PREFIXES = (BUNDLE_PREFIX, PATCH_PREFIX)


class Sweep(msgspec.Struct, kw_only=True, frozen=True):
    """The decision over one listing of the store."""

    expired: tuple[StoredArtifact, ...]  # to delete
    referenced: int  # kept: an open run names them
    recent: int  # kept: younger than the retention
    foreign: int  # kept: not a name codeyard writes


def run_references(run: Run) -> set[str]:
    """Names of the objects `run` needs: its snapshot chain and its tasks' stored patches."""
    names = {bundle.name for bundle in run.repo.bundles.bundles} if run.repo.bundles else set()
    names.update(
        task.patch.object_name
        for task in run.tasks.values()
        if task.patch is not None and task.patch.object_name
    )
    return names


def referenced_artifacts(open_runs: Iterable[Run]) -> frozenset[str]:
    names: set[str] = set()
    for run in open_runs:
        names |= run_references(run)
    return frozenset(names)


def kind_of(name: str) -> str:
    """`bundle`, `patch` or `other`: the label of the deletion counter."""
    if name.startswith(BUNDLE_PREFIX):
        return "bundle"
    if name.startswith(PATCH_PREFIX):
        return "patch"
    return "other"


def is_expired(modified_at: datetime, now: datetime, retention: timedelta) -> bool:
    return now - modified_at > retention


def sweep(
    objects: Iterable[StoredArtifact],
    referenced: frozenset[str],
    now: datetime,
    retention: timedelta,
) -> Sweep:
    """What to delete among `objects`, oldest first, and how many stay for which reason."""
    expired: list[StoredArtifact] = []
    kept_referenced = kept_recent = foreign = 0
    for stored in objects:
        if not stored.name.startswith(COLLECTED_PREFIXES):
            foreign += 1
        elif stored.name in referenced:
            kept_referenced += 1
        elif not is_expired(stored.modified_at, now, retention):
            kept_recent += 1
        else:
            expired.append(stored)
    expired.sort(key=lambda stored: (stored.modified_at, stored.name))
    return Sweep(
        expired=tuple(expired), referenced=kept_referenced, recent=kept_recent, foreign=foreign
    )
