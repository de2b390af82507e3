"""`DiskGuard`: stops a sandboxed run before it fills the disk its workdir is on.

A run may write its workdir, which is on the host's disk. RLIMIT_FSIZE bounds each file, not
their number, so many files under the limit could still fill the disk and take the host (and
NATS' file store on it) down with it. The guard polls the free space of the workdir's
filesystem and ends the run when it falls below a reserve. It looks at the whole filesystem,
not at what this run wrote: cheap (one statvfs per poll, however large the repository) and
never fooled by hard links or sparse files; the price is that a disk filled by something else
stops runs too, which is then the right thing to do anyway.

Two reserves, because a filesystem runs out of either: bytes, and inodes. Empty files,
directories and symlinks cost an inode each and next to no bytes, so a run creating them
(20,000 to 100,000 a second on the development machine's disk) would exhaust the inode table
of an ext4 disk with its bytes untouched, and then nothing on the host could create a file
there. Filesystems that allocate inodes as needed (btrfs, tmpfs mounted with nr_inodes=0)
report no inode count (f_files 0); only their bytes are watched.

Between two polls a run gets ahead of the guard by what it can allocate in one interval, so
the reserves must hold that slack. Measured on the development machine (one process, its
disk): ~110 MiB of data (mmap stores; ~60 MiB with write()) and up to ~10,000 inodes; in a
tmpfs workdir ~43,000 inodes. A run that ends within an interval is looked at once more as
it ends (`codeyard.sandbox.supervision`). Preallocation is the exception no interval covers:
fallocate() reserves GiBs in a millisecond, and with FALLOC_FL_KEEP_SIZE past the file-size
limit too, so the bwrap backend refuses it outright (`codeyard.sandbox.seccomp`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

POLL_SECONDS = 0.1


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on `path`'s filesystem."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def free_inodes(path: Path) -> int | None:
    """Inodes an unprivileged writer may still use on `path`'s filesystem; None when it has
    no fixed number of them (it reports f_files 0 then, and f_favail 0 means nothing)."""
    stats = os.statvfs(path)
    return stats.f_favail if stats.f_files else None


class DiskGuard:
    """Watches `path`'s filesystem; `breached()` returns once less than `reserve_bytes` bytes
    or `reserve_inodes` inodes are free (immediately if that is already the case)."""

    def __init__(
        self,
        path: Path,
        reserve_bytes: int,
        reserve_inodes: int,
        interval: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self.reserve_inodes = reserve_inodes
        self.interval = interval

    def shortage(self) -> str:
        """What the filesystem is short of ("less than N bytes"), "" when it is not."""
        try:
            stats = os.statvfs(self.path)
        except FileNotFoundError:  # the run removed its own workdir: nothing left to guard
            return ""
        if stats.f_bavail * stats.f_frsize < self.reserve_bytes:
            return f"less than {self.reserve_bytes} bytes"
        if stats.f_files and stats.f_favail < self.reserve_inodes:
            return f"less than {self.reserve_inodes} inodes (files, directories, links)"
        return ""

    async def breached(self) -> str:
        """Returns the shortage once there is one."""
        while not (shortage := self.shortage()):  # noqa: ASYNC110 - nothing signals free space
            await asyncio.sleep(self.interval)
        return shortage
