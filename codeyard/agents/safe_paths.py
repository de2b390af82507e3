"""Which paths an agent may touch inside a working directory.

The paths come from an LLM, so they are hostile until checked: a path must be relative, written
in normal form, within the file system's length limits, stay inside the directory, pass through
no symlink and never enter `.git` (whose hooks and config git would run or obey).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

# Linux limits (bytes): a longer name makes every system call on it fail with ENAMETOOLONG, so
# it is refused here with a reason the model can act on rather than an OSError mid-edit.
NAME_MAX = 255
PATH_MAX = 4096  # the absolute path, counting the terminating NUL
# Names in a path (its directories and the file), at most: git takes any depth, but deeper than
# Python's recursion limit the host's own tools (`os.walk`, `shutil.rmtree`, `rglob` before
# 3.12) fail on the tree. No repository needs a hundred.
MAX_DEPTH = 100


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
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file name git can show as text
        raise UnsafePath("the path is not valid UTF-8 text") from None
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
    if long := next((part for part in parts if len(os.fsencode(part)) > NAME_MAX), None):
        raise UnsafePath(
            f"the name {long[:40]!r}... is {len(os.fsencode(long))} bytes long; "
            f"a file or directory name can be at most {NAME_MAX} bytes"
        )
    base = root.resolve(strict=True)
    room = PATH_MAX - 1 - len(os.fsencode(base)) - 1  # the NUL, the '/' after the root
    if (size := len(os.fsencode(relative))) > room:
        raise UnsafePath(f"the path is {size} bytes long; here it can be at most {room} bytes")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"the path is {len(parts)} names deep; it can be at most {MAX_DEPTH}")
    try:
        _check_components(base, parts)
    except OSError as exc:
        # Whatever else the file system refuses (permissions, a loop, an I/O error): a reason
        # for this path, not a crash of the agent that asked.
        raise UnsafePath(f"the path cannot be checked: {exc.strerror or exc}") from None
    return base / relative


def _check_components(base: Path, parts: list[str]) -> None:
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
