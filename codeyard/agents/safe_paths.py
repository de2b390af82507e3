"""Which paths an agent may touch inside a working directory.

The paths come from an LLM, so they are hostile until checked: a path must be relative, written
in normal form, stay inside the directory, pass through no symlink and never enter `.git` (whose
hooks and config git would run or obey).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A path an agent may not touch; the message says why."""


def workspace_path(root: Path, relative: str) -> Path:
    """The absolute path of `relative` inside `root`, or `UnsafePath` saying why it is refused.

    No component of the path may be a symlink, even one pointing back inside `root`: writing
    through it would change a file other than the one named (and git refuses paths beyond a
    symlink, so the change could not become a patch either). Nor may the path lead into a nested
    git repository.
    """
    if not relative:
        raise UnsafePath("the path is empty")
    if "\0" in relative:
        raise UnsafePath("the path contains a NUL character")
    if "\\" in relative:
        raise UnsafePath("the path contains '\\'; separate directories with '/'")
    if relative.startswith("/"):
        raise UnsafePath("the path is absolute; give it relative to the repository root")
    parts = relative.split("/")
    if ".." in parts:
        raise UnsafePath("the path contains '..'")
    normal = PurePosixPath(relative).as_posix()
    if normal != relative or "." in parts:
        raise UnsafePath(f"the path is not in normal form; write {normal!r}")
    # casefold: on case-insensitive file systems `.GIT` is the same directory.
    if any(part.casefold() == ".git" for part in parts):
        raise UnsafePath("the path is inside .git")
    base = root.resolve(strict=True)
    current = base
    for depth, part in enumerate(parts, start=1):
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"{'/'.join(parts[:depth])!r} is a symlink")
        if not current.exists():
            break  # nothing below a missing directory can be a symlink yet
        # A nested repository or submodule: its files are another repository's business, and
        # its own .git would be within reach.
        if depth < len(parts) and os.path.lexists(current / ".git"):
            raise UnsafePath(f"{'/'.join(parts[:depth])!r} is a separate git repository")
    return base / relative
