"""A private checkout of a work item's repository, and what roles read from and do to it.

`RepoRef.snapshot` is a repository on this machine holding the item's head: the worker's
snapshot cache (`codeyard.workspace.repo_localizer`), or the coordinator's integration clone
when they share a disk.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from codeyard.agents.outputs import FileEdit, WriteFile
from codeyard.agents.safe_paths import UnsafePath, workspace_path
from codeyard.bus.worker import GiveUp
from codeyard.sandbox.scratch import scratch_directory
from codeyard.schemas.model import RepoRef
from codeyard.workspace.git import GitError, checkout, git

WORKING_COPY_SCRATCH = "codeyard-"  # the prefix of the working copies' scratch directories

MAX_FILE_CHARS = 60_000
MAX_TOTAL_CHARS = 200_000


def working_copy(repo: RepoRef) -> WorkingCopy:
    """A throwaway clone of the repository at the item's head, removed afterwards: `async with`
    in a coroutine (the copying and the removal run in a thread), `with` elsewhere."""
    return WorkingCopy(repo)


class WorkingCopy:
    """See `working_copy`. A plain `with` on an event loop is refused: the copy of a large
    repository would stall the loop, and with it the heartbeats that keep a work item ours, so
    the item would be redelivered while it runs and its model paid for twice."""

    NAME = "working_copy"  # as its callers know it, for the error of a misuse

    def __init__(self, repo: RepoRef) -> None:
        source = repo.snapshot or repo.path
        if not source:
            raise GiveUp("the work item names no repository to work on")
        self._source = Path(source)
        self._head = repo.head or "HEAD"
        self._stack = ExitStack()

    def __enter__(self) -> Path:
        if _on_event_loop():
            # GiveUp, not an error retried: the same code does the same on every delivery
            raise GiveUp(
                f"{self.NAME} blocks while it copies the repository: in an `async def`, "
                f"use `async with {self.NAME}(...)`"
            )
        return self._enter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stack.__exit__(kind, error, trace)

    async def __aenter__(self) -> Path:
        return await asyncio.to_thread(self._enter)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._stack.__exit__, kind, error, trace)

    def _enter(self) -> Path:
        if not self._source.is_dir():
            raise GiveUp(f"repository {self._source} is not on this machine's disk")
        with ExitStack() as stack:
            # sandboxed code runs in it, and may leave it hard to remove (see scratch_directory)
            scratch = stack.enter_context(scratch_directory(WORKING_COPY_SCRATCH))
            root = checkout(self._source, scratch / "repo", self._head)
            self._stack = stack.pop_all()  # kept until exit
        return root


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# What stands for the rest of a file the prompt shows in part, or not at all: said, or a model
# asked for "the complete content" of a file it was shown the start of writes that start alone.
CUT_NOTE = (
    "\n[... the file goes on: only its start is shown. Change it with replace edits: writing "
    "it whole would delete the rest]"
)
NOT_SHOWN = (
    "[not shown: the files before it fill the prompt. Change it with replace edits only: "
    "writing it whole would delete what it holds]"
)


def read_files(root: Path, paths: Sequence[str]) -> dict[str, str]:
    """The text of the named files that exist inside the repository, within size caps (a file
    cut or left out says so: `CUT_NOTE`, `NOT_SHOWN`); paths that are unsafe or missing are left
    out (the task may name files still to be created)."""
    files: dict[str, str] = {}
    total = 0
    for relative in paths:
        try:
            target = workspace_path(root, relative)
        except UnsafePath:
            continue
        if not target.is_file():
            continue
        if total >= MAX_TOTAL_CHARS:
            files[relative] = NOT_SHOWN
            continue
        with target.open(errors="replace") as file:  # the start only, however large the file
            text = file.read(MAX_FILE_CHARS)
            if file.read(1):
                text += CUT_NOTE
        files[relative] = text
        total += len(text)
    return files


def shown_whole(files: Mapping[str, str]) -> set[str]:
    """The repository paths (normalised) of the files `read_files` showed whole."""
    return {
        posixpath.normpath(path)
        for path, text in files.items()
        if text != NOT_SHOWN and not text.endswith(CUT_NOTE)
    }


def blind_writes(root: Path, edits: Sequence[FileEdit], whole: set[str]) -> list[str]:
    """The files that exist and that `edits` write whole though the prompt did not show them
    whole (cut, left out, or not named at all): such a write deletes what the model never saw."""
    return [
        edit.path
        for edit in edits
        if isinstance(edit, WriteFile)
        and posixpath.normpath(edit.path) not in whole
        and _is_file(root, edit.path)
    ]


def _is_file(root: Path, relative: str) -> bool:
    try:
        return workspace_path(root, relative).is_file()
    except UnsafePath:  # (the edit is refused for it when applied)
        return False


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
