"""`run_in_session`: a command run as our subprocess in a session of its own, inside the
cgroups of the run when there are any (pids, memory), supervised by
`codeyard.sandbox.supervision`. How the bwrap and process backends run their (wrapped) command.

`SessionExecution` is that subprocess as the supervision sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from codeyard.observability.sandbox_runs import counted
from codeyard.sandbox.cgroups import RunCgroups, SandboxCgroups
from codeyard.sandbox.limits import Limits
from codeyard.sandbox.output import OutputTail, pump
from codeyard.sandbox.protocol import RunOutcome
from codeyard.sandbox.supervision import supervise


class SessionExecution:
    """The started subprocess `proc`, leader of its own session (so of a process group).

    `kill_group_after_exit`: whether killing it also signals its process group once `proc`
    itself has ended, to reach what it left in the background. After the leader is reaped its
    pid stays the group's id while any member lives, and an empty group is no longer
    signalled (ESRCH). The bwrap backend does without: its pid namespace and cgroup take the
    stragglers.

    `check_start`, when given, is called with the exit status and the output once `proc` has
    ended by itself (not killed); it raises `SandboxUnavailable` when the wrapper never got to
    start the command (bwrap: bubblewrap could not build the sandbox).
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: RunCgroups | None,
        started: float,
        limits: Limits,
        *,
        kill_group_after_exit: bool,
        check_start: Callable[[int, str], None] | None = None,
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.started = started
        self.output = OutputTail(limits.output_bytes)
        self._kill_group_after_exit = kill_group_after_exit
        self._check_start = check_start
        self._killed = False

    async def output_closed(self) -> None:
        assert self.proc.stdout is not None
        await pump(self.proc.stdout, self.output)

    async def exit_status(self) -> int:
        returncode = await self.proc.wait()
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if self._check_start and not self._killed:
            self._check_start(exit_code, self.output.text())
        return exit_code

    async def kill(self) -> None:
        self._killed = True
        self.kill_now()

    def kill_now(self) -> None:
        if self._kill_group_after_exit or self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup:
            self.cgroup.kill()

    def pids_hit(self) -> bool | None:
        return self.cgroup.pids_hit() if self.cgroup else None

    def memory_hit(self) -> bool | None:
        return self.cgroup.memory_hit() if self.cgroup else None


# Makes the execution of a started subprocess: (proc, cgroup, started, limits).
ExecutionFactory = Callable[
    [asyncio.subprocess.Process, RunCgroups | None, float, Limits], SessionExecution
]


async def run_in_session(
    backend: str,
    argv: list[str],
    limits: Limits,
    cgroups: SandboxCgroups | None,
    pids_max: int,
    memory_max: int | None,
    execution: ExecutionFactory,
    *,
    env: Mapping[str, str],
    workdir: Path,
    cwd: os.PathLike[str] | None = None,
    pass_fds: tuple[int, ...] = (),
    cpus: float | None = None,
) -> RunOutcome:
    """Runs `argv` (joining new cgroups of `cgroups` capped at `pids_max` processes and
    `memory_max` bytes first, when there are any), kills whatever is left of it when it ends
    and removes the cgroups. Counted whole: a run that could not start (no cgroup, no
    process) is an `error` too."""

    async def attempt() -> RunOutcome:
        cgroup = cgroups.new_run(pids_max, memory_max, cpus) if cgroups else None
        try:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *(cgroup.join_argv(argv) if cgroup else argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                pass_fds=pass_fds,
                start_new_session=True,
            )
            running = execution(proc, cgroup, started, limits)
            try:
                return await supervise(running, limits, workdir)
            finally:
                running.kill_now()
        finally:
            if cgroup:
                await cgroup.remove()

    return await counted(backend, attempt())
