"""The integration clones on the coordinator's disk, as garbage collection lists and removes
them: each run's directory `<data dir>/runs/<run_id>` (its clone is `integration` inside).

Only directories named like a run id are clones; anything else under `runs/` was put there by
someone else and is never listed. A clone is removed by renaming its directory away first, so
a crash in the middle of removing it never leaves half a clone under the run's name (which
`GitIntegrator.prepare` would take for a whole one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from codeyard.sandbox.scratch import remove_tree, walk
from codeyard.schemas.envelope import ID_PATTERN

CLONE_DIR = "integration"  # inside the run's directory
REMOVING_SUFFIX = ".removing"
_RUN_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class CloneOnDisk:
    run_id: str
    path: Path  # the run's directory
    changed_at: datetime  # the last change of the directory, its clone or the clone's .git


def list_clones(root: Path) -> list[CloneOnDisk]:
    """The run directories under `root` (`GitIntegrator.root`), by run id."""
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if not _RUN_ID.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        changed_at = last_change(entry)
        if changed_at is not None:  # else removed meanwhile
            found.append(CloneOnDisk(entry.name, entry, changed_at))
    return found


def last_change(run_dir: Path) -> datetime | None:
    """When codeyard last wrote to the run's clone; None when the directory is gone.

    Cloning writes all three and preparing a run touches its directory; each merge or revert
    replaces the clone's index, a rename in `.git`. Reading the clone changes none of them."""
    newest = None
    for path in (run_dir, run_dir / CLONE_DIR, run_dir / CLONE_DIR / ".git"):
        try:
            mtime = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return None if newest is None else datetime.fromtimestamp(newest, UTC)


def size_on_disk(run_dir: Path) -> int:
    """Bytes of the files under `run_dir` (symbolic links not followed)."""
    total = 0
    for directory, _, files in walk(str(run_dir)):  # (a tree of any depth)
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
    return total


def remove_clone(run_dir: Path) -> bool:
    """Remove the run's directory; False when it was not there (removed meanwhile)."""
    doomed = run_dir.with_name(f".{run_dir.name}.{os.getpid()}{REMOVING_SUFFIX}")
    try:
        run_dir.rename(doomed)
    except FileNotFoundError:
        return False
    remove_tree(doomed)
    return True


def remove_leftovers(root: Path) -> None:
    """Finish the removals a crash interrupted."""
    if root.is_dir():
        for leftover in root.glob(f".*{REMOVING_SUFFIX}"):
            remove_tree(leftover)
