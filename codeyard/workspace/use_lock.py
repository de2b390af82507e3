"""Many users of a thing at once, or one remover that never waits for them.

Users hold a shared `flock` on the thing's lock file for as long as they need it; a remover
takes the lock exclusively without blocking and removes only when that succeeds: then nobody
uses the thing, and nobody can start to until the remover is done. Users poll for the lock like
`FileLock` does, for the same reason (a thread parked in `flock` would hold one of the default
executor's few threads). Lock files are never deleted: a process may have one open, and a new
file of the same name would be a second, independent lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path


@asynccontextmanager
async def in_use(path: Path, poll_interval: float = 0.05) -> AsyncIterator[None]:
    """Hold `path` shared (waiting while a remover holds it) until the block ends."""
    fd = await asyncio.to_thread(_open, path)
    try:
        while True:
            if _try_flock(fd, fcntl.LOCK_SH):
                break
            await asyncio.sleep(poll_interval)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def unused(path: Path) -> Iterator[bool]:
    """Whether nobody holds `path`; if so it is held exclusively until the block ends."""
    fd = _open(path)
    try:
        yield _try_flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
