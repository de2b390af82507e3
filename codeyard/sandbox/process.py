"""`ProcessSandbox`: runs a command as a plain child process with resource limits and NO isolation.

For machines where neither Docker nor bubblewrap can run, and only for code one trusts: it is
refused unless the user opts in explicitly (`CODEYARD_SANDBOX=process` together with
`CODEYARD_ALLOW_UNSANDBOXED=1`, or `ProcessSandbox(opt_in=True)`), and never chosen
automatically. `UNSANDBOXED_RISKS` says what is not contained.

What it still enforces:

- wall time: the command runs in a new session (its own process group); at the wall time the
  group is killed (exit 137), and so are members left behind when the command ends.
- CPU, address space, file size, open files, no core dumps: rlimits
  (`codeyard.sandbox.rlimit_shim`).
- processes: a pids cgroup of the run when one is writable (as with bwrap; it also catches
  processes that left the process group); else, when not root, RLIMIT_NPROC above the user's
  current count (the count is per user, so it is approximate). As root without a writable pids
  cgroup, the number of processes is not bounded (the kernel exempts root from RLIMIT_NPROC).
- output: kept as a bounded tail.
- environment: PATH (the interpreter's bin dir first, with `python`/`python3` aliases), a
  fresh HOME and TMPDIR removed after the run, LANG=C.UTF-8, plus what the caller passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from codeyard.sandbox.cgroups import PIDS, RunCgroups, SandboxCgroups
from codeyard.sandbox.limits import Limits
from codeyard.sandbox.protocol import RunOutcome, SandboxUnavailable, checked_request
from codeyard.sandbox.rlimit_shim import NO_LIMIT, host_prlimit, own_ceilings, shim_argv
from codeyard.sandbox.scratch import remove_tree
from codeyard.sandbox.session_run import SessionExecution, run_in_session
from codeyard.sandbox.workdir import checked_workdir, python_roots

log = logging.getLogger(__name__)

UNSANDBOXED_RISKS = (
    "the process backend does not isolate the command: it has the network (services on the "
    "host's loopback, and whatever the host can reach), it can read and write every file the "
    "user running codeyard can (not only its workdir), it sees and may signal that user's "
    "other processes, and it has that user's privileges (all of them when codeyard runs as "
    "root: with CAP_SYS_RESOURCE it may raise its own rlimits); it only bounds time, CPU, "
    "memory, file size, open files, processes and output"
)


def unsandboxed_refusal(opt_in: str) -> str:
    """Why the process backend is refused, and how to `opt_in` (in the words of who asked for
    it: a program or a configuration)."""
    return (
        f"refusing to run generated code without a sandbox: {UNSANDBOXED_RISKS}. To accept "
        f"that for code you trust, {opt_in}; otherwise use the docker or bwrap backend"
    )


class ProcessSandbox:
    """The unisolated backend of `Sandbox` (see the module docstring): refuses to exist
    without `opt_in=True`. `python` is the interpreter named `python` for the command
    (default: the one running codeyard)."""

    name = "process"

    def __init__(self, *, opt_in: bool = False, python: Path | None = None) -> None:
        if not opt_in:
            raise SandboxUnavailable(unsandboxed_refusal("pass opt_in=True"))
        self.python = Path(python) if python else Path(sys.executable)
        self._python_roots = python_roots(self.python)
        self._prlimit = host_prlimit()
        self._cgroups = SandboxCgroups.find([PIDS]) or None
        if self._cgroups is None and os.geteuid() == 0:
            log.warning(
                "process sandbox as root without a writable pids cgroup: the number of "
                "processes of a run is not bounded"
            )

    @property
    def pids_enforcement(self) -> str:
        """How the pids limit is enforced: "cgroup:<path>", "rlimit" or "none"."""
        if self._cgroups:
            return f"cgroup:{self._cgroups.parent(PIDS)}"
        return "rlimit" if os.geteuid() != 0 else "none"

    async def run(
        self,
        workdir: Path,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome:
        arguments = checked_request(command, env)
        workdir = checked_workdir(workdir, self._python_roots)
        home = Path(tempfile.mkdtemp(prefix="codeyard-process-"))
        try:
            nproc = self._nproc(limits)
            argv = shim_argv(self._prlimit, limits, nproc, arguments, own_ceilings())
            # The shell that joins the cgroup becomes the command: no process of ours in it.
            return await run_in_session(
                self.name,
                argv,
                limits,
                self._cgroups,
                limits.pids,
                None,  # memory: RLIMIT_AS per process only (no memory cgroup here)
                _execution,
                env=self._environment(home, env),
                cwd=workdir,
                workdir=workdir,
            )
        finally:
            await asyncio.to_thread(remove_tree, home)  # (the command wrote there: any depth)

    def _nproc(self, limits: Limits) -> int:
        """RLIMIT_NPROC for the run: none with a cgroup or as root (see the module doc)."""
        if self._cgroups or os.geteuid() == 0:
            return NO_LIMIT
        return _tasks_of_user(os.getuid()) + limits.pids

    def _environment(self, home: Path, env: Mapping[str, str] | None) -> dict[str, str]:
        bin_dir = home / "bin"
        bin_dir.mkdir()
        (home / "tmp").mkdir()
        for alias in ("python", "python3"):
            (bin_dir / alias).symlink_to(self.python)
        environment = {
            "PATH": f"{bin_dir}:{self.python.parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
        }
        environment.update(env or {})
        return environment


def _execution(
    proc: asyncio.subprocess.Process, cgroup: RunCgroups | None, started: float, limits: Limits
) -> SessionExecution:
    # Without a pid namespace, what the command left in the background after it ended is
    # found through its process group.
    return SessionExecution(proc, cgroup, started, limits, kill_group_after_exit=True)


def _tasks_of_user(uid: int) -> int:
    """Processes and threads of `uid` now: what RLIMIT_NPROC counts for that user."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count
