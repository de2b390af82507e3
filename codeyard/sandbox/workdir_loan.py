"""Lending a run's workdir to the sandbox user (uid/gid 65534) and taking it back.

The docker backend runs the command as uid 65534 on the host's kernel with no user namespace
mapping, so the bind-mounted workdir must belong to 65534 for the command to write it. The
workdir is a throwaway copy made for the run, and only it is touched:

- lending chowns the workdir's directories and singly-linked files to 65534. A file with more
  than one hard link (a `git clone --local` shares the objects of the original repository) is
  left alone: chowning it would hand the original's inode to the sandbox user too. The sandbox
  can still read it (git objects are read-only anyway). Nothing on another filesystem (a mount
  inside the workdir) and no symlink target is ever touched: lchown, no symlinks followed.
- taking back chowns what belongs to 65534 afterwards (what was lent, what the command made)
  to the workdir's original owner, so the caller finds its files as it left them, as with the
  bwrap backend. Again singly-linked files only: a hard link the command made to something of
  the sandbox user's elsewhere stays as it is.

Only root can chown; a caller that is not root runs the command as itself instead (see
`codeyard.sandbox.docker`), and nothing is lent.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from codeyard.sandbox.protocol import SANDBOX_UID
from codeyard.sandbox.scratch import walk


class WorkdirLoan:
    """The ownership of `workdir`, lent to the sandbox user by `lend` until `give_back`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        info = workdir.stat()
        self.owner = (info.st_uid, info.st_gid)
        self._device = info.st_dev

    def lend(self) -> None:
        for path, info in self._entries():
            if info.st_uid != SANDBOX_UID or info.st_gid != SANDBOX_UID:
                os.lchown(path, SANDBOX_UID, SANDBOX_UID)

    def give_back(self) -> None:
        uid, gid = self.owner
        for path, info in self._entries():
            if info.st_uid == SANDBOX_UID or info.st_gid == SANDBOX_UID:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(path, uid, gid)

    def _entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """The workdir and everything below it that may change owner (see the module doc)."""
        for directory, dirnames, filenames in walk(str(self.workdir)):  # any depth
            try:
                info = os.lstat(directory)
            except OSError:  # gone, or its path too long: left to the sandbox's uid
                dirnames.clear()
                continue
            if info.st_dev != self._device:
                dirnames.clear()
                continue
            yield directory, info
            for name in filenames + [d for d in dirnames if os.path.islink(f"{directory}/{d}")]:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if info.st_dev == self._device and (
                    stat.S_ISLNK(info.st_mode) or info.st_nlink == 1
                ):
                    yield path, info
