"""`DiskGuard`: stops a sandboxed run before it fills the disk its workdir is on.

A run may write its workdir, which is on the host's disk. RLIMIT_FSIZE bounds each file, not
their number, so many files under the limit could still fill the disk and take the host (and
NATS' file store on it) down with it. The guard polls the free space of the workdir's
filesystem and ends the run when it falls below a reserve. It looks at the whole filesystem,
not at what this run wrote: cheap (one statvfs per poll, however large the repository) and
never fooled by hard links or sparse files; the price is that a disk filled by something else
stops runs too, which is then the right thing to do anyway. A fast writer gets up to one poll
interval past the reserve, so the reserve must hold a few hundred MB of slack.
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


class DiskGuard:
    """Watches `path`'s filesystem; `breached()` returns once less than `reserve_bytes` are
    free (immediately if that is already the case)."""

    def __init__(self, path: Path, reserve_bytes: int, interval: float = POLL_SECONDS) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self.interval = interval

    def low(self) -> bool:
        try:
            return free_bytes(self.path) < self.reserve_bytes
        except FileNotFoundError:  # the run removed its own workdir: nothing left to guard
            return False

    async def breached(self) -> None:
        while not self.low():  # noqa: ASYNC110 - polling is the point: nothing signals free space
            await asyncio.sleep(self.interval)
