"""Bounding what a whole sandbox may use with cgroups: its processes (pids), its memory and
its share of the CPUs.

`SandboxCgroups.find` looks for a writable hierarchy for each controller it is asked for and
`new_run` makes the cgroups of one run, `RunCgroups`: one directory per hierarchy. cgroup v1
mounts each controller as its own hierarchy (or a few together), so a run is in several
cgroups there (one in the pids hierarchy, one in the memory hierarchy...); cgroup v2 has one
hierarchy, so a run is one cgroup with every controller. They cap the run (`pids.max`;
`memory.limit_in_bytes` or `memory.max`, swap included; `cpu.cfs_quota_us` or `cpu.max`),
say when a cap struck (`pids.events`; the OOM killer's count in `memory.oom_control` or
`memory.events`) and kill every member, however it detached from its parent.

Needed because rlimits are per process: the kernel exempts root from RLIMIT_NPROC, and
RLIMIT_AS bounds each process alone, so N processes may use N times it (see
`codeyard.sandbox.bwrap`). A run's processes join its cgroups through `RunCgroups.join_argv`
before the sandboxed command starts.

Where: a parent `codeyard-sandbox` at the top of each hierarchy (beside Docker's `docker`),
one `run-*` child of it per run. At the top rather than below the cgroup codeyard itself is
in: cgroup v2 forbids enabling controllers for the children of a cgroup that has processes
(codeyard's has codeyard), and a parent left below a service manager's cgroup would keep that
manager from removing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

PIDS = "pids"
MEMORY = "memory"
CPU = "cpu"
# The CFS bandwidth period: a run capped at N cores runs N * 100 ms of every 100 ms at most.
_CPU_PERIOD_US = 100_000

_CGROUP_NAME = "codeyard-sandbox"
# Between attempts to remove a run's cgroup: killed processes take a moment to leave it. The
# usual case is one short wait (bubblewrap's monitor exits while the namespace's init is still
# dying), so the first pauses are short; about 2 s in all before giving up.
_REMOVE_PAUSES = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016) + (0.02,) * 99
# The caps of the trial cgroup `find` makes to check that a hierarchy is usable (no process
# ever joins it).
_TRIAL_PIDS = 1
_TRIAL_MEMORY = 64 * 1024 * 1024
# The largest memory cap the kernel keeps (LONG_MAX rounded down to a page; what an uncapped
# cgroup v1 reports): larger caps are written as it, never as a number that would wrap.
_MEMORY_CAP_MAX = (2**63 - 1) // 4096 * 4096


class RunCgroup:
    """One cgroup of a run, in one hierarchy."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2
        # What a process writes "0" to to join (see `RunCgroups.join_argv`).
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

    def pids_hit(self) -> bool:
        """Whether a fork failed at `pids.max` (v1 and v2 alike: "max N" in pids.events)."""
        return self._counter("pids.events", "max") > 0

    def memory_hit(self) -> bool:
        """Whether the OOM killer killed a member: the memory cap could not be kept by
        reclaiming (page cache alone at the cap is reclaimed, not counted)."""
        return self._counter("memory.events" if self.v2 else "memory.oom_control", "oom_kill") > 0

    def _counter(self, file: str, key: str) -> int:
        """The value of `key` in a flat keyed file ("key value" lines); 0 when unreadable."""
        try:
            lines = (self.path / file).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
        return 0

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


class RunCgroups:
    """The cgroups of one run, by controller (in cgroup v2 every controller has the same one)."""

    def __init__(self, by_controller: Mapping[str, RunCgroup]) -> None:
        self.by_controller = dict(by_controller)
        self.members: list[RunCgroup] = []
        for cgroup in self.by_controller.values():
            if cgroup not in self.members:
                self.members.append(cgroup)

    def join_argv(self, argv: list[str]) -> list[str]:
        """`argv` run by a shell that first joins every cgroup of the run, so every process
        it starts is in them.

        "0" is the writer itself. In cgroup v1 the shell writes it to `tasks`, which moves just
        the calling thread (the shell has only one): the kernel then skips the global lock
        that moving a whole process takes, whose acquisition waits for an RCU grace period
        (about 11 ms on the development machine, on the critical path of every run) unless
        another move just happened. cgroup v2 knows only whole processes (`cgroup.procs`) in a
        cgroup like ours.
        """
        count = len(self.members)
        if not count:  # none writable (an unprivileged user in a container): nothing to join
            return argv
        joins = " && ".join(f'echo 0 > "${n}"' for n in range(1, count + 1))
        script = f'{joins} && shift {count} && exec "$@"'
        files = [str(cgroup.join_file) for cgroup in self.members]
        return ["/bin/sh", "-c", script, "codeyard-join", *files, *argv]

    def pids(self) -> list[int]:
        return self.members[0].pids()

    def kill(self) -> None:
        for cgroup in self.members:
            cgroup.kill()

    def pids_hit(self) -> bool | None:
        """Whether the pids cap struck; None without a pids cgroup."""
        cgroup = self.by_controller.get(PIDS)
        return cgroup.pids_hit() if cgroup else None

    def memory_hit(self) -> bool | None:
        """Whether the memory cap struck (the OOM killer); None without a memory cgroup."""
        cgroup = self.by_controller.get(MEMORY)
        return cgroup.memory_hit() if cgroup else None

    async def remove(self) -> None:
        for cgroup in self.members:
            await cgroup.remove()

    def remove_blocking(self) -> None:
        for cgroup in self.members:
            cgroup.remove_blocking()


class CgroupTree:
    """The parent cgroup `codeyard-sandbox` in one hierarchy: one child cgroup per run,
    capped by the controllers `add`ed to it."""

    def __init__(self, mount: Path, v2: bool) -> None:
        self.mount = mount
        self.parent = mount / _CGROUP_NAME
        self.v2 = v2
        self.controllers: set[str] = set()

    def add(self, controller: str) -> None:
        """Makes runs capped by `controller` too; raises OSError when the hierarchy does not
        let us (checked with a trial cgroup)."""
        if self.v2:
            _enable(self.mount, controller)
        self.parent.mkdir(exist_ok=True)
        if self.v2:
            _enable(self.parent, controller)
        trial = self.new_run(_TRIAL_PIDS, _TRIAL_MEMORY, self.controllers | {controller}, 1.0)
        joinable = os.access(trial.join_file, os.W_OK)
        trial.remove_blocking()
        if not joinable:
            raise PermissionError(f"{trial.join_file} is not writable")
        self.controllers.add(controller)

    def new_run(
        self,
        pids_max: int,
        memory_max: int | None,
        controllers: Iterable[str] | None = None,
        cpus: float | None = None,
    ) -> RunCgroup:
        path = self.parent / f"run-{uuid.uuid4().hex}"
        path.mkdir()
        try:
            for controller in sorted(self.controllers if controllers is None else controllers):
                if controller == PIDS:
                    (path / "pids.max").write_text(str(pids_max))
                elif controller == MEMORY:
                    if memory_max is None:
                        raise ValueError("a memory cgroup needs a memory cap")
                    _cap_memory(path, self.v2, memory_max)
                elif controller == CPU and cpus is not None:
                    _cap_cpu(path, self.v2, cpus)
        except BaseException:
            path.rmdir()
            raise
        return RunCgroup(path, v2=self.v2)

    def sweep(self) -> None:
        """Removes empty run cgroups left by a crashed codeyard. A live run's cgroup is never
        empty a moment after its creation, and rmdir refuses a cgroup with processes."""
        now = time.time()
        for stale in self.parent.glob("run-*"):
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > 60:
                    stale.rmdir()


class SandboxCgroups:
    """Where runs get their cgroups: a `CgroupTree` per controller found usable (the same
    tree for controllers of one hierarchy). Empty (false) when none is."""

    def __init__(self, trees: Mapping[str, CgroupTree]) -> None:
        self.trees = dict(trees)

    @classmethod
    def find(cls, controllers: Iterable[str]) -> SandboxCgroups:
        """For each of `controllers`, the first hierarchy with it where we can create, cap and
        join a cgroup (cgroup v1 first); controllers without one are left out."""
        trees: dict[str, CgroupTree] = {}
        by_mount: dict[Path, CgroupTree] = {}
        for controller in controllers:
            for mount, v2 in _hierarchies(controller):
                tree = by_mount.get(mount) or CgroupTree(mount, v2)
                try:
                    tree.add(controller)
                except OSError as exc:
                    log.debug("%s cgroup at %s unusable: %s", controller, mount, exc)
                    continue
                by_mount[mount] = trees[controller] = tree
                break
        for tree in by_mount.values():
            tree.sweep()
        return cls(trees)

    def __bool__(self) -> bool:
        return bool(self.trees)

    def parent(self, controller: str) -> Path | None:
        """The parent cgroup of the runs in `controller`'s hierarchy; None without one."""
        tree = self.trees.get(controller)
        return tree.parent if tree else None

    def new_run(
        self, pids_max: int, memory_max: int | None = None, cpus: float | None = None
    ) -> RunCgroups:
        """The cgroups of a new run, capped at `pids_max` processes, `memory_max` bytes of
        memory (needed when there is a memory cgroup) and `cpus` cores (None: uncapped)."""
        made: dict[CgroupTree, RunCgroup] = {}
        try:
            for tree in self.trees.values():
                if tree not in made:
                    made[tree] = tree.new_run(pids_max, memory_max, cpus=cpus)
        except BaseException:
            for cgroup in made.values():
                cgroup.remove_blocking()  # empty: removed at the first attempt
            raise
        return RunCgroups({c: made[tree] for c, tree in self.trees.items()})


def _cap_memory(path: Path, v2: bool, memory_max: int) -> None:
    """Caps the memory of the cgroup at `path`, swap included: a run must not push the host
    into swap instead of being stopped."""
    memory_max = min(memory_max, _MEMORY_CAP_MAX)
    if v2:
        (path / "memory.max").write_text(str(memory_max))
        swap = path / "memory.swap.max"  # missing when the kernel does not account swap
        if swap.exists():
            swap.write_text("0")
        return
    (path / "memory.limit_in_bytes").write_text(str(memory_max))
    # memory+swap; must come after memory.limit_in_bytes, which it may not be below
    memsw = path / "memory.memsw.limit_in_bytes"  # missing without swap accounting
    if memsw.exists():
        memsw.write_text(str(memory_max))
    else:
        # Without it the cgroup's own reclaim at the cap never swaps (v1 semantics of 0).
        (path / "memory.swappiness").write_text("0")


def _cap_cpu(path: Path, v2: bool, cpus: float) -> None:
    """Lets the cgroup at `path` use `cpus` cores' worth of time at most (a busy loop per core
    would otherwise take every core of the host for the run's wall time)."""
    quota = max(1000, round(cpus * _CPU_PERIOD_US))  # (the kernel's least quota is 1 ms)
    if v2:
        (path / "cpu.max").write_text(f"{quota} {_CPU_PERIOD_US}")
        return
    (path / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
    (path / "cpu.cfs_quota_us").write_text(str(quota))


def _hierarchies(controller: str) -> list[tuple[Path, bool]]:
    """Mount points of cgroup hierarchies with `controller`: (path, is cgroup v2), v1 first."""
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
        if fs[0] == "cgroup" and controller in fs[2].split(","):
            v1.append((mount, False))
        elif fs[0] == "cgroup2":
            with contextlib.suppress(OSError):
                if controller in (mount / "cgroup.controllers").read_text().split():
                    v2.append((mount, True))
    return v1 + v2


def confining_memory_limit() -> int | None:
    """The memory cap of the cgroup this process is in, or of one above it, when finite and
    below the machine's RAM (a container's limit, a service's MemoryMax): whatever runs here,
    sandboxes included, cannot take the host's memory beyond it. None when nothing caps it."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        total = _memory_total()
    except (OSError, ValueError):
        return None
    caps: list[int] = []
    for mount, v2 in _hierarchies(MEMORY):
        for line in own:
            _, controllers, path = line.split(":", 2)
            if (controllers == "") != v2 or (not v2 and MEMORY not in controllers.split(",")):
                continue
            cgroup = mount / path.lstrip("/")
            for directory in (cgroup, *cgroup.parents):
                if directory == mount.parent:
                    break
                with contextlib.suppress(OSError, ValueError):
                    text = (
                        directory / ("memory.max" if v2 else "memory.limit_in_bytes")
                    ).read_text()
                    if text.strip() != "max":
                        caps.append(int(text))
    finite = [cap for cap in caps if cap < total]
    return min(finite) if finite else None


def _memory_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no MemTotal in /proc/meminfo")


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    for code in ("040", "011", "012", "134"):
        path = path.replace(f"\\{code}", chr(int(code, 8)))
    return path


def _enable(cgroup: Path, controller: str) -> None:
    """cgroup v2: let the children of `cgroup` use `controller`."""
    control = cgroup / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")
