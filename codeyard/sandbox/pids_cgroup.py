"""Bounding the processes of a sandbox with a pids cgroup: `PidsCgroups` finds a writable pids
hierarchy and makes one `RunCgroup` per run, which caps (`pids.max`), reports the cap being hit
(`pids.events`) and kills every member, however it detached from its parent.

Needed because RLIMIT_NPROC does not limit root (see `codeyard.sandbox.bwrap`). A run's
processes join its cgroup through `join_argv` before the sandboxed command starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_CGROUP_NAME = "codeyard-sandbox"
# Between attempts to remove a run's cgroup: killed processes take a moment to leave it. The
# usual case is one short wait (bubblewrap's monitor exits while the namespace's init is still
# dying), so the first pauses are short; about 2 s in all before giving up.
_REMOVE_PAUSES = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016) + (0.02,) * 99


def join_argv(cgroup: RunCgroup, argv: list[str]) -> list[str]:
    """`argv` run by a shell that first joins `cgroup`, so every process it starts is in it.

    "0" is the writer itself. In cgroup v1 the shell writes it to `tasks`, which moves just the
    calling thread (the shell has only one): the kernel then skips the global lock that moving
    a whole process takes, whose acquisition waits for an RCU grace period (about 11 ms on the
    development machine, on the critical path of every run) unless another move just happened.
    cgroup v2 knows only whole processes (`cgroup.procs`) in a cgroup like ours.
    """
    return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(cgroup.join_file), *argv]


class PidsCgroups:
    """The parent cgroup `codeyard-sandbox` in a pids hierarchy: one child cgroup per run."""

    def __init__(self, parent: Path, v2: bool) -> None:
        self.parent = parent
        self.v2 = v2

    @classmethod
    def find(cls) -> PidsCgroups | None:
        """The first pids hierarchy where we can create, limit and join a cgroup, else None."""
        for mount, v2 in _pids_hierarchies():
            try:
                cgroups = cls(_prepare_parent(mount, v2), v2)
                trial = cgroups.new_run(1)
                joinable = os.access(trial.join_file, os.W_OK)
                trial.remove_blocking()
                if not joinable:
                    raise PermissionError(f"{trial.join_file} is not writable")
            except OSError as exc:
                log.debug("pids cgroup at %s unusable: %s", mount, exc)
                continue
            cgroups.sweep()
            return cgroups
        return None

    def sweep(self) -> None:
        """Removes empty run cgroups left by a crashed codeyard. A live run's cgroup is never
        empty a moment after its creation, and rmdir refuses a cgroup with processes."""
        now = time.time()
        for stale in self.parent.glob("run-*"):
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > 60:
                    stale.rmdir()

    def new_run(self, pids_max: int) -> RunCgroup:
        path = self.parent / f"run-{uuid.uuid4().hex}"
        path.mkdir()
        try:
            (path / "pids.max").write_text(str(pids_max))
        except OSError:
            path.rmdir()
            raise
        return RunCgroup(path, v2=self.v2)


class RunCgroup:
    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        # What a process writes "0" to to join (see `join_argv`).
        self.join_file = path / ("cgroup.procs" if v2 else "tasks")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        kill_file = self.path / "cgroup.kill"  # cgroup v2, Linux 5.14+
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
                return
        for _ in range(20):  # a fork bomb refills the list until it is at pids.max
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                self._kill_member(pid)

    def _kill_member(self, pid: int) -> None:
        """SIGKILL `pid` if it is still in this cgroup, without racing pid reuse: the pidfd
        pins the process that was checked, so a recycled pid is never signalled."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            if f"/{self.path.name}\n" in Path(f"/proc/{pid}/cgroup").read_text():
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)

    def hit_max(self) -> bool:
        try:
            events = (self.path / "pids.events").read_text().split()
        except OSError:
            return False
        return len(events) >= 2 and events[0] == "max" and events[1] != "0"

    def _try_remove(self) -> bool:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    async def remove(self) -> None:
        for pause in _REMOVE_PAUSES:
            if self._try_remove():
                return
            self.kill()
            await asyncio.sleep(pause)
        log.warning("could not remove sandbox cgroup %s (still busy)", self.path)

    def remove_blocking(self) -> None:
        for pause in _REMOVE_PAUSES:
            if self._try_remove():
                return
            self.kill()
            time.sleep(pause)
        log.warning("could not remove sandbox cgroup %s (still busy)", self.path)


def _pids_hierarchies() -> list[tuple[Path, bool]]:
    """Mount points of cgroup hierarchies with the pids controller: (path, is cgroup v2)."""
    v1: list[tuple[Path, bool]] = []
    v2: list[tuple[Path, bool]] = []
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    for line in mountinfo.splitlines():
        mount_fields, _, fs_fields = line.partition(" - ")
        fields, fs = mount_fields.split(), fs_fields.split()
        if len(fields) < 5 or len(fs) < 3:
            continue
        mount = Path(_unescape(fields[4]))
        if fs[0] == "cgroup" and "pids" in fs[2].split(","):
            v1.append((mount, False))
        elif fs[0] == "cgroup2":
            with contextlib.suppress(OSError):
                if "pids" in (mount / "cgroup.controllers").read_text().split():
                    v2.append((mount, True))
    return v1 + v2


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    for code in ("040", "011", "012", "134"):
        path = path.replace(f"\\{code}", chr(int(code, 8)))
    return path


def _prepare_parent(mount: Path, v2: bool) -> Path:
    parent = mount / _CGROUP_NAME
    if v2:
        _enable_pids(mount)
    parent.mkdir(exist_ok=True)
    if v2:
        _enable_pids(parent)
    return parent


def _enable_pids(cgroup: Path) -> None:
    """cgroup v2: let the children of `cgroup` use the pids controller."""
    control = cgroup / "cgroup.subtree_control"
    if "pids" not in control.read_text().split():
        control.write_text("+pids")
