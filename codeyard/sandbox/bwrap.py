"""`BwrapSandbox`: runs a command under bubblewrap (Linux namespaces) with resource limits.

What the command sees and may do:

- Namespaces: `--unshare-all` (user, pid, net, ipc, uts, cgroup). The network namespace has
  only its own loopback, so nothing on the host or outside is reachable; the pid namespace
  hides host processes and dies with its init (`--die-with-parent` ties that to us).
- Filesystem: a read-only root built from /usr (plus the /bin, /lib... symlinks or dirs), a
  short list of harmless /etc files (no /etc/shadow, no private keys) and the interpreter's
  prefix at its own path; the workdir read-write at `/workspace` (its `.git` read-only: see
  `codeyard.sandbox.workdir.git_metadata`); a size-capped tmpfs at /tmp
  (also HOME) and /dev/shm; a minimal /dev and a fresh /proc. Everything else of the host
  (its home directories, the codeyard checkout, sockets) does not exist inside.
- Identity: uid/gid 65534 (nobody) in a new user namespace, all capabilities dropped, no new
  privileges (bubblewrap always sets NO_NEW_PRIVS), no nested user namespaces
  (`--disable-userns`), a new session (no TIOCSTI into our terminal).
  The sandbox uid maps to the uid that runs codeyard, so files the command creates in the
  workdir belong to the caller and writing into the caller's workdir needs no chown. The
  flip side: for file permissions on the host the command *is* the caller, so what is bound
  read-only must not hold secrets readable by the caller (hence the /etc allowlist).
- Environment: only PATH (the interpreter's bin dir first, then `python`/`python3` aliases),
  HOME=/tmp, TMPDIR=/tmp, LANG=C.UTF-8, plus what the caller passes.

Limits (`Limits`):

- wall time: enforced here, by killing bubblewrap's process group and the run's cgroup; the
  pid namespace takes every process of the sandbox with it.
- CPU, address space, file size, open files (and no core dumps): rlimits, set by `prlimit`
  just before it execs the command (after bubblewrap has built the namespaces, so bubblewrap
  itself is not limited; `codeyard.sandbox.rlimit_shim`); soft and hard limits alike, so the
  command cannot raise them.
- memory of the whole run: RLIMIT_AS bounds each process alone, so 8 processes under a 256 MiB
  limit could hold 8 x 200 MiB of the host's RAM (and 256 processes of 2 GiB, the defaults, far
  more than any host has). So every run also gets a memory cgroup of its own
  (`codeyard-sandbox/run-*`, next to its pids cgroup; `codeyard.sandbox.cgroups`) capped at
  `memory_bytes` plus what its /tmp and /dev/shm may hold (tmpfs pages are charged to the
  cgroup of whoever wrote them), swap included. When the processes together reach it the
  kernel reclaims the run's page cache, then its OOM killer kills one of them (the largest),
  and the run reports `killed_by_limit="memory"`. RLIMIT_AS stays: it makes a single
  oversized allocation fail cleanly (MemoryError) instead of drawing the OOM killer. No
  writable memory cgroup (cgroup v1 `memory` hierarchy, or cgroup v2 with the memory
  controller) means no bound, so the sandbox refuses with `SandboxUnavailable`.
- processes: RLIMIT_NPROC does not work for root. The kernel exempts uid 0 of the host from
  it (`copy_process`: `user != INIT_USER`), and the sandbox's uid 65534 *is* host uid 0 when
  codeyard runs as root, so a fork bomb would be unbounded (verified on the development
  machine: 200 forks under `RLIMIT_NPROC=30`). So:
  1. when a pids cgroup is writable (cgroup v1 `pids` hierarchy, or cgroup v2 with the pids
     controller), every run gets its own cgroup `codeyard-sandbox/run-*` with `pids.max`;
     the wrapper shell joins it (and the memory cgroup) before exec'ing bubblewrap, so
     nothing escapes it, and it also tells us when the limit was hit (`pids.events`);
  2. else, when codeyard is not root, RLIMIT_NPROC: since Linux 5.14 the count is kept per
     user namespace, so it bounds the sandbox without counting the user's other processes;
  3. else (root without a writable pids cgroup, as in an unprivileged container) the sandbox
     refuses with `SandboxUnavailable`: run codeyard as a non-root user, or with a writable
     cgroup, or use the docker backend (`codeyard.sandbox.docker`).
- CPUs: every run may use `cpus` cores' worth of time (default 1, as the docker backend's),
  a CFS quota on a cpu cgroup of its own where one is writable; else only RLIMIT_CPU bounds
  each process, and a run of busy processes may take every core of the host for its wall
  time (`cpu_enforcement` says which).
- output: read while the command runs and kept as a bounded tail buffer.

The first `run` (or `probe()`) checks once that bubblewrap can really build this sandbox here
(it cannot in a container without user namespaces, for example) and raises
`SandboxUnavailable` with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from codeyard.sandbox.cgroups import (
    CPU,
    MEMORY,
    PIDS,
    RunCgroups,
    SandboxCgroups,
    confining_memory_limit,
)
from codeyard.sandbox.limits import Limits, MiB
from codeyard.sandbox.protocol import (
    SANDBOX_UID,
    SANDBOX_WORKDIR,
    RunOutcome,
    SandboxUnavailable,
    checked_request,
)
from codeyard.sandbox.rlimit_shim import host_prlimit, own_ceilings, shim_argv
from codeyard.sandbox.seccomp import filter_fd, sandbox_filter
from codeyard.sandbox.session_run import SessionExecution, run_in_session
from codeyard.sandbox.workdir import SYSTEM_DIRS, checked_workdir, git_metadata, python_roots

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; scripts/install.sh "
    "does it)"
)

# How long a failed check that a sandbox can be built stands before it is made again.
PROBE_RETRY_SECONDS = 60.0

_BIN_DIR = "/run/codeyard/bin"
# Where bubblewrap is started: the shell joining the run's cgroups exports its directory as
# PWD, which bubblewrap (pid 1 inside, its environ readable there) would tell the sandbox.
HOST_CWD = Path("/")
# Bound read-only when present: what the dynamic loader, Python, git and friends read. No
# /etc/shadow, /etc/ssl/private or other files only root should read (see the module doc).
_ETC_FILES = (
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/debian_version",
    "/etc/gai.conf",
    "/etc/gitconfig",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/locale.alias",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/protocols",
    "/etc/services",
    "/etc/ssl/certs",
    "/etc/timezone",
)
_SHM_BYTES = 64 * MiB
_CGROUP_OVERHEAD = 2  # bubblewrap's monitor and the namespace's init are in the cgroup too
_NPROC_OVERHEAD = 1  # the namespace's init counts against RLIMIT_NPROC


class BwrapSandbox:
    """The bubblewrap backend of `Sandbox` (see the module docstring for what it enforces).

    `python` is the interpreter made available inside (default: the one running codeyard, so a
    repository's `python -m pytest` finds the installed packages); its prefix is bound
    read-only at the same path. `bwrap` defaults to `bwrap` on PATH.
    """

    name = "bwrap"

    def __init__(
        self, python: Path | None = None, bwrap: Path | None = None, cpus: float = 1.0
    ) -> None:
        if not cpus > 0:
            raise ValueError(f"cpus must be positive, got {cpus!r}")
        self.cpus = cpus
        found = str(bwrap) if bwrap else shutil.which("bwrap")
        if not found or not os.access(found, os.X_OK):
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
        self.bwrap = Path(found).absolute()
        self.python = Path(python) if python else Path(sys.executable)
        self._python_roots = python_roots(self.python)
        self._prlimit = host_prlimit()
        self._cgroups = SandboxCgroups({})
        self._confined: int | None = None  # bytes: see `memory_enforcement`
        self._seccomp = b""  # the BPF program of `sandbox_filter`, after `probe()`
        self._probe_lock = threading.Lock()
        self._ready = False
        self._failure: tuple[SandboxUnavailable, float] | None = None  # and when (monotonic)

    @property
    def pids_enforcement(self) -> str:
        """How the pids limit is enforced: "cgroup:<path>" or "rlimit" (after `probe()`)."""
        parent = self._cgroups.parent(PIDS)
        return f"cgroup:{parent}" if parent else "rlimit"

    @property
    def memory_enforcement(self) -> str:
        """Where the memory of a whole run is capped (after `probe()`): "cgroup:<path>", a
        cgroup of its own; or "shared:<bytes>", the limit of the cgroup codeyard is in."""
        parent = self._cgroups.parent(MEMORY)
        return f"cgroup:{parent}" if parent else f"shared:{self._confined}"

    @property
    def cpu_enforcement(self) -> str:
        """Where a run's share of the CPUs is capped (after `probe()`): "cgroup:<path>", or
        "none" (RLIMIT_CPU alone, per process)."""
        parent = self._cgroups.parent(CPU)
        return f"cgroup:{parent}" if parent else "none"

    def probe(self) -> None:
        """Checks that a sandbox can be built here (once it could, never again); raises
        `SandboxUnavailable` if not. A failure is remembered for PROBE_RETRY_SECONDS, then
        the check is made again: one that failed for a passing reason (the probe's time limit on
        a loaded machine, a cgroup being set up) left the worker refusing every run until it
        was restarted.

        Blocking (runs bubblewrap once); `run` calls it in a thread.
        """
        with self._probe_lock:
            if self._ready:
                return
            if self._failure is not None:
                failure, at = self._failure
                if time.monotonic() - at < PROBE_RETRY_SECONDS:
                    raise failure
            try:
                self._probe()
            except SandboxUnavailable as exc:
                self._failure = (exc, time.monotonic())
                raise
            self._failure = None
            self._ready = True

    def _probe(self) -> None:
        cgroups = SandboxCgroups.find([PIDS, MEMORY, CPU])
        if cgroups.parent(MEMORY) is None:
            # In a container (no writable cgroups for its user), the container's own memory
            # limit still keeps a run from the host's memory: it then shares that limit with
            # codeyard, and a runaway run is stopped by the OOM killer inside the container.
            self._confined = confining_memory_limit()
            if self._confined is None:
                raise SandboxUnavailable(
                    "cannot bound the memory of a sandbox here: no memory cgroup is writable, "
                    "RLIMIT_AS bounds each process alone (N processes may use N times the "
                    "limit), and nothing caps the memory of codeyard's own cgroup. Give codeyard "
                    "a writable cgroup with the memory controller (cgroup v1: the `memory` "
                    "hierarchy; cgroup v2: the memory controller at the root, e.g. as root or in "
                    "a container with a writable /sys/fs/cgroup), run it in a memory-limited "
                    "container or service, or use the docker backend"
                )
            log.warning(
                "no writable memory cgroup: the processes of a sandboxed run are bounded together "
                "only by the %d-byte memory limit of the cgroup codeyard runs in, which they "
                "share with codeyard",
                self._confined,
            )
        if cgroups.parent(PIDS) is None and os.geteuid() == 0:
            raise SandboxUnavailable(
                "cannot bound the number of processes in a sandbox here: codeyard runs as root "
                "(which RLIMIT_NPROC does not limit) and no pids cgroup is writable. Run codeyard "
                "as a non-root user, or give it a writable cgroup (pids controller)"
            )
        self._cgroups = cgroups
        self._seccomp = sandbox_filter()
        probe_limits = Limits()
        cgroup = cgroups.new_run(8 + _CGROUP_OVERHEAD, _memory_cap(probe_limits))
        seccomp_fd = filter_fd(self._seccomp)
        try:
            with tempfile.TemporaryDirectory(prefix="codeyard-probe-") as tmp:
                command = ["python", "-c", "pass"]
                argv = self._argv(Path(tmp), command, probe_limits, None, seccomp_fd)
                result = subprocess.run(
                    cgroup.join_argv(argv),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    env=self._environment(None),
                    cwd=HOST_CWD,
                    pass_fds=(seccomp_fd,),
                    timeout=60,
                    check=False,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"cannot run bubblewrap ({self.bwrap}): {exc}") from exc
        finally:
            os.close(seccomp_fd)
            cgroup.kill()
            cgroup.remove_blocking()
        if result.returncode != 0:
            raise SandboxUnavailable(
                f"bubblewrap cannot build a sandbox here (exit {result.returncode}): "
                f"{(result.stderr + result.stdout).strip()[-2000:]}. It needs unprivileged "
                "user namespaces (sysctl kernel.unprivileged_userns_clone=1 / "
                "user.max_user_namespaces > 0; inside a container, one that allows them)"
            )
        log.info(
            "bubblewrap sandbox ready (pids limit: %s, memory limit: %s, cpu limit: %s)",
            self.pids_enforcement,
            self.memory_enforcement,
            self.cpu_enforcement,
        )

    async def run(
        self,
        workdir: Path,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome:
        arguments = checked_request(command, env)
        if not self._ready:
            await asyncio.to_thread(self.probe)
        workdir = checked_workdir(workdir, self._python_roots)
        status_r, status_w = os.pipe()
        open_fds = {status_r, status_w}
        try:
            seccomp_fd = filter_fd(self._seccomp)
            open_fds.add(seccomp_fd)
            argv = self._argv(workdir, arguments, limits, status_w, seccomp_fd)

            def execution(
                proc: asyncio.subprocess.Process,
                cgroup: RunCgroups | None,
                started: float,
                limits: Limits,
            ) -> SessionExecution:
                for fd in (status_w, seccomp_fd):  # bubblewrap has its own copies now
                    os.close(fd)
                    open_fds.discard(fd)
                # Stragglers: the pid namespace dies with its init, the cgroup is killed.
                return SessionExecution(
                    proc,
                    cgroup,
                    started,
                    limits,
                    kill_group_after_exit=False,
                    check_start=functools.partial(_check_started, status_r),
                )

            return await run_in_session(
                self.name,
                argv,
                limits,
                self._cgroups,
                limits.pids + _CGROUP_OVERHEAD,
                _memory_cap(limits),
                execution,
                env=self._environment(env),
                pass_fds=(status_w, seccomp_fd),
                workdir=workdir,
                cwd=HOST_CWD,
                cpus=self.cpus,
            )
        finally:
            for fd in open_fds:
                os.close(fd)

    def _environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        environment = {
            "PATH": f"{self.python.parent}:{_BIN_DIR}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "USER": "nobody",
            "LOGNAME": "nobody",
        }
        environment.update(env or {})
        return environment

    def _argv(
        self,
        workdir: Path,
        command: list[str],
        limits: Limits,
        status_fd: int | None,
        seccomp_fd: int,
    ) -> list[str]:
        uid = str(SANDBOX_UID)
        args = [str(self.bwrap), "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--uid", uid, "--gid", uid, "--hostname", "sandbox"]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if status_fd is not None:
            args += ["--json-status-fd", str(status_fd)]
        # applied last, right before the command (prlimit) is exec'd: bubblewrap is not bound
        args += ["--seccomp", str(seccomp_fd)]
        args += ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                args += ["--ro-bind", name, name]
        for name in _ETC_FILES:
            args += ["--ro-bind-try", name, name]
        # bubblewrap leaves /proc/sys writable when it looks read-only (mode 0555), and the
        # kernel lets uid 0 write it without capabilities: as root the sandbox's user is host
        # uid 0, and a writable kernel.core_pattern runs a program as host root on a crash.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev"]
        # (only those this kernel has: bubblewrap cannot create a mount point in /proc)
        for name in _present(PROC_READ_ONLY):
            args += ["--ro-bind", name, name]
        # A device node in /proc (nodev) cannot be opened: these become unreadable, unwritable.
        for name in _present(PROC_MASKED):
            args += ["--ro-bind", "/dev/null", name]
        args += ["--size", str(_shm_bytes(limits)), "--tmpfs", "/dev/shm"]
        args += ["--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp"]
        # after the tmpfs mounts, so an interpreter living under /tmp (a venv) stays visible
        for root in self._python_roots:
            args += ["--ro-bind", str(root), str(root)]
        args += ["--bind", str(workdir), SANDBOX_WORKDIR]
        metadata = git_metadata(workdir)
        if metadata is not None:
            args += ["--ro-bind", str(metadata), f"{SANDBOX_WORKDIR}/.git"]
        args += ["--dir", _BIN_DIR]
        for alias in ("python", "python3"):
            args += ["--symlink", str(self.python), f"{_BIN_DIR}/{alias}"]
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SANDBOX_WORKDIR]
        nproc = limits.pids + _NPROC_OVERHEAD
        args += ["--", *shim_argv(self._prlimit, limits, nproc, command, own_ceilings())]
        return args


# The kernel's settings under /proc that are not /proc/sys (Docker's read-only list): as root,
# the sandbox's user is host uid 0 to file permissions, and may write what root may
# (/proc/irq/*/smp_affinity moves the host's interrupts).
PROC_READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/acpi", "/proc/scsi")
# Out of reach, for the same reason (Docker's masked paths, and more):
# - /proc/sysrq-trigger: one character written reboots or crashes the host;
# - keyrings are not namespaced: /proc/keys lists the worker's keys (names and sizes; seccomp
#   refuses reading them);
# - the rest, root's to read: the host's physical memory state (kpage*), the kernel's heap
#   (slabinfo, pagetypeinfo), its addresses (vmallocinfo, kallsyms, kcore) and timers.
PROC_MASKED = (
    "/proc/sysrq-trigger",
    "/proc/keys",
    "/proc/key-users",
    "/proc/kcore",
    "/proc/kallsyms",
    "/proc/kpageflags",
    "/proc/kpagecount",
    "/proc/kpagecgroup",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/proc/vmallocinfo",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/latency_stats",
)


@functools.cache
def _present(names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `names` this kernel has (looked up once, not at each run)."""
    return tuple(filter(os.path.exists, names))


def _memory_cap(limits: Limits) -> int:
    """What the processes of a run may hold in RAM together: `memory_bytes`, plus the /tmp and
    /dev/shm tmpfs when full, whose pages are charged to the run's memory cgroup too."""
    return limits.memory_bytes + limits.tmpfs_bytes + _shm_bytes(limits)


def _shm_bytes(limits: Limits) -> int:
    return min(_SHM_BYTES, limits.tmpfs_bytes)


def _check_started(status_fd: int, exit_code: int, output: str) -> None:
    """Raises unless bubblewrap reported the command's pid on its status fd (bubblewrap has
    ended: all it wrote is there)."""
    os.set_blocking(status_fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(status_fd, 4096):
            data += chunk
    if b'"child-pid"' not in data:
        raise SandboxUnavailable(
            f"bubblewrap could not start the command (exit {exit_code}): {output[-2000:]}"
        )
