"""Scratch directories that sandboxed code wrote into, and their removal.

Code run in the sandbox (bwrap) has the uid of codeyard's own user, so it can leave behind
directories without write permission holding symlinks to the user's files. Python's
`TemporaryDirectory` before 3.11.8 (CVE-2023-6597) makes such a directory writable when an
unlink fails by `chmod`ing the path, following a symlink that stands there: the sandbox could
have a file of the user's made world-writable. Here only real directories are made writable,
each through a descriptor opened without following links, and the rest is left to
`shutil.rmtree`, which never follows links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A new temporary directory, removed afterwards with `remove_tree`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything in it, whatever permissions its directories were left
    with, without following a symlink anywhere. What cannot be removed is left (logged by
    nobody: a scratch directory left behind costs disk, not safety)."""
    _make_writable(str(path))
    for root, dirs, _files in os.walk(path):  # never descends into a link to a directory
        for name in dirs:
            _make_writable(os.path.join(root, name))
    shutil.rmtree(path, ignore_errors=True)


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
