"""`FileLock`: one holder at a time among the asyncio tasks of a process and among processes.

Inside the process an `asyncio.Lock` queues the tasks; between processes `flock` on a lock file
decides. The flock is polled without blocking: a thread parked in a blocking `flock` would hold
one of the default executor's few threads, and enough of them could starve the very git work
the holder needs to finish.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from types import TracebackType


class FileLock:
    def __init__(self, path: Path, poll_interval: float = 0.05) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._in_process = asyncio.Lock()
        self._fd: int | None = None

    async def __aenter__(self) -> FileLock:
        await self._in_process.acquire()
        try:
            self._fd = await asyncio.to_thread(self._open)
            while True:
                if self._try_flock(self._fd):
                    break
                await asyncio.sleep(self.poll_interval)
        except BaseException:
            self._close()
            self._in_process.release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()  # closing the descriptor releases the flock
        self._in_process.release()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    @staticmethod
    def _try_flock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
