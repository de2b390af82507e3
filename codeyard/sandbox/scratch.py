"""Scratch directories that sandboxed code wrote into, and their removal.

Code run in the sandbox (bwrap) has the uid of codeyard's own user, so it can leave behind
directories without write permission holding symlinks to the user's files. Python's
`TemporaryDirectory` before 3.11.8 (CVE-2023-6597) makes such a directory writable when an
unlink fails by `chmod`ing the path, following a symlink that stands there: the sandbox could
have a file of the user's made world-writable. Here nothing is changed through a link.

Sandboxed code may also leave a tree of any depth (`mkdir` in a loop, descending): deeper than
Python's recursion limit, which `os.walk` and `shutil.rmtree` reach before Python 3.12 and 3.13
(a `RecursionError`: the checkout was left on disk, and the error replaced the work's result),
and deeper than `PATH_MAX`. GNU `chmod -R` and `rm -r` walk such trees by descriptors; `walk`
is `os.walk` with a stack, for what must be done in Python.

A process killed while it works (a worker scaled down, a coordinator failing over) leaves its
scratch directory behind: a copy of a repository, each time. Their names hold the pid of the
process that made them, so that a service starting removes those of processes no longer
running (`remove_abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _make(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A new temporary directory, removed afterwards with `remove_tree`."""
    path = _make(prefix)
    try:
        yield path
    finally:
        remove_tree(path)


@contextlib.asynccontextmanager
async def scratch_directory_async(prefix: str) -> AsyncIterator[Path]:
    """`scratch_directory` for a coroutine: removed in a thread, as the tree sandboxed code left
    may take seconds to remove (a suite that made a hundred thousand files stalled the
    coordinator's event loop for five)."""
    path = await asyncio.to_thread(_make, prefix)
    try:
        yield path
    finally:
        await asyncio.shield(asyncio.to_thread(remove_tree, path))


def remove_abandoned(prefix: str) -> int:
    """Remove the scratch directories named with `prefix` that processes no longer running left
    in the temporary directory; how many. Those of running processes, other users' and links
    are left alone."""
    removed = 0
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            pid, sep, _ = entry.name.removeprefix(prefix).partition("-")
            ours = entry.name.startswith(prefix) and sep and pid.isascii() and pid.isdigit()
            if not ours:
                continue  # (or another prefix that starts with this one: `codeyard-suite-`)
            with contextlib.suppress(OSError):
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                    and not _running(int(pid))
                ):
                    remove_tree(Path(entry.path))
                    removed += 1
    return removed


async def sweep_abandoned(prefix: str) -> None:
    """`remove_abandoned` in a thread (trees may take seconds to remove), saying what it did."""
    if removed := await asyncio.to_thread(remove_abandoned, prefix):
        log.info("removed %d scratch directories %s* of processes gone", removed, prefix)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def remove_tree(path: Path) -> None:
    """Remove `path` and everything in it, whatever permissions its directories were left
    with and however deep, without following a symlink anywhere. What cannot be removed is
    left (logged by nobody: a scratch directory left behind costs disk, not safety)."""
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    try:
        # chmod changes no link it meets in the tree (nor what it points to), only `path`'s
        # own target if it were one (it is not, see above)
        for command in (["chmod", "-R", "u+rwx"], ["rm", "-rf", "--one-file-system"]):
            subprocess.run([*command, "--", str(path)], capture_output=True, check=False)
    except OSError:  # no coreutils here: as deep as Python goes
        for root, dirs, _files in walk(str(path)):
            for name in (".", *dirs):
                _make_writable(os.path.join(root, name))
        with contextlib.suppress(RecursionError):
            shutil.rmtree(path, ignore_errors=True)


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top)`, top-down, with a stack instead of recursion (see the module doc): links
    to directories are listed among the directories but not entered, and clearing or pruning
    the list of directories a step yields keeps the walk out of them. A directory that cannot
    be read (gone, its path too long) is passed over."""
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except OSError:
            continue
        dirs: list[str] = []
        files: list[str] = []
        enter: set[str] = set()
        for entry in listed:
            try:
                is_dir = entry.is_dir()
                if is_dir and not entry.is_symlink():
                    enter.add(entry.name)
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        yield directory, dirs, files
        stack.extend(os.path.join(directory, d) for d in reversed(dirs) if d in enter)


def _make_writable(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # a link (refused), or a directory even we may not open
        return
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IRWXU)
    finally:
        os.close(fd)
