"""`supervise`: watching one started command to its end, the same for every backend.

A backend starts the command its own way and hands over an `Execution`; `supervise` enforces
the wall time (killing the command when it is up), keeps the output's bounded tail and says
how the run ended (`RunOutcome`): exit code as a shell reports it, 137 when the wall time
killed it, and which limit stopped it. It also kills a command that is filling the disk its
workdir is on (`DiskGuard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Protocol

from codeyard.sandbox.disk_guard import DiskGuard
from codeyard.sandbox.limit_hit import limit_hit
from codeyard.sandbox.limits import Limits
from codeyard.sandbox.output import OutputTail
from codeyard.sandbox.protocol import LimitName, RunOutcome

# After a kill every writer of the output is dead or about to be: what is still on its way
# arrives at once, unless something outside the sandbox's reach holds the pipe.
_DRAIN_SECONDS = 5.0
_KILLED = 128 + 9  # SIGKILL, as a shell reports it


class Execution(Protocol):
    """A started command, as the backend that started it sees it."""

    started: float  # time.monotonic() when it was started
    output: OutputTail  # where its combined stdout and stderr go

    async def output_closed(self) -> None:
        """Returns once every writer of the output is gone, everything read into `output`.
        A cancelled call loses nothing: the next one goes on where it stopped."""

    async def exit_status(self) -> int:
        """The exit status once the command has ended, 128+N when signal N ended it."""

    async def kill(self) -> None:
        """Kills the command and everything it started."""

    def pids_hit(self) -> bool | None:
        """Whether the pids limit was hit; None when the backend cannot tell."""

    def memory_hit(self) -> bool | None:
        """Whether the memory limit of the whole run made the OOM killer strike; None when
        the backend cannot tell (yet)."""


async def supervise(execution: Execution, limits: Limits, workdir: Path) -> RunOutcome:
    """Waits for `execution` to end, within `limits.wall_seconds` and while the filesystem of
    `workdir` keeps `limits.disk_reserve_bytes` and `limits.disk_reserve_inodes` free."""
    timed_out = disk_full = False
    ended = asyncio.ensure_future(_ended(execution))
    disk = DiskGuard(workdir, limits.disk_reserve_bytes, limits.disk_reserve_inodes)
    guard = asyncio.ensure_future(disk.breached())
    try:
        async with asyncio.timeout(limits.wall_seconds):
            await asyncio.wait({ended, guard}, return_when=asyncio.FIRST_COMPLETED)
        disk_full = not ended.done()
    except TimeoutError:
        timed_out = True
    except asyncio.CancelledError:
        ended.cancel()  # the caller kills what runs; nothing of ours may outlive the call
        raise
    finally:
        guard.cancel()
    if ended.done():
        exit_code = ended.result()
    else:
        ended.cancel()  # and wait until it let go of the output, which is read on below
        with contextlib.suppress(asyncio.CancelledError):
            await ended
        await execution.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_SECONDS):
                await execution.output_closed()
        await execution.exit_status()
        exit_code = _KILLED
    duration = time.monotonic() - execution.started
    output = execution.output.text()
    # A run may use up a reserve and end before the guard looks again (empty files in a tmpfs
    # workdir: ~43,000 per poll interval): the disk is as short as if it had been stopped.
    shortage = "" if disk_full or timed_out else disk.shortage()
    if disk_full:
        output += (
            f"\n[codeyard: stopped: {guard.result()} were left free on the disk of the workdir]\n"
        )
        hit: LimitName = "disk"
    elif shortage:
        output += (
            f"\n[codeyard: {shortage} were left free on the disk of the workdir when the run "
            "ended]\n"
        )
        hit = "disk"
    else:
        memory_hit = execution.memory_hit()
        hit = limit_hit(exit_code, timed_out, output, execution.pids_hit(), memory_hit)
        if hit == "memory" and memory_hit:
            output += (
                "\n[codeyard: the processes of the run together used all the memory it may "
                "have; the kernel's OOM killer killed at least one of them]\n"
            )
    return RunOutcome(
        exit_code=exit_code,
        output=output,
        timed_out=timed_out,
        duration_seconds=duration,
        killed_by_limit=hit,
    )


async def _ended(execution: Execution) -> int:
    await execution.output_closed()
    return await execution.exit_status()
