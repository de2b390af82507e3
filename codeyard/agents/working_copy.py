"""A private checkout of a work item's repository, and what roles read from and do to it.

`RepoRef.snapshot` is a repository on this machine holding the item's head: the worker's
snapshot cache (`codeyard.workspace.repo_localizer`), or the coordinator's integration clone
when they share a disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from codeyard.agents.safe_paths import UnsafePath, workspace_path
from codeyard.bus.worker import GiveUp
from codeyard.sandbox.scratch import scratch_directory
from codeyard.schemas.model import RepoRef
from codeyard.workspace.git import GitError, checkout, git

MAX_FILE_CHARS = 60_000
MAX_TOTAL_CHARS = 200_000


@contextmanager
def working_copy(repo: RepoRef) -> Iterator[Path]:
    """A throwaway clone of the repository at the item's head, removed afterwards."""
    source = repo.snapshot or repo.path
    if not source:
        raise GiveUp("the work item names no repository to work on")
    if not Path(source).is_dir():
        raise GiveUp(f"repository {source} is not on this machine's disk")
    with scratch_directory("codeyard-") as scratch:  # sandboxed code runs in it
        yield checkout(Path(source), scratch / "repo", repo.head or "HEAD")


def read_files(root: Path, paths: Sequence[str]) -> dict[str, str]:
    """The text of the named files that exist inside the repository, within size caps; paths
    that are unsafe or missing are left out (the task may name files still to be created)."""
    files: dict[str, str] = {}
    total = 0
    for relative in paths:
        try:
            target = workspace_path(root, relative)
        except UnsafePath:
            continue
        if not target.is_file() or total >= MAX_TOTAL_CHARS:
            continue
        text = target.read_text(errors="replace")[:MAX_FILE_CHARS]
        files[relative] = text
        total += len(text)
    return files


class PatchDoesNotApply(Exception):
    pass


def apply_patch(root: Path, patch: str) -> None:
    """Apply a unified diff to the checkout (three-way, so it survives nearby merges)."""
    if not patch.strip():
        return
    try:
        git(root, "apply", "--3way", "--index", "--whitespace=nowarn", stdin=patch)
    except GitError as exc:
        raise PatchDoesNotApply(exc.output.strip()[-4000:]) from exc
