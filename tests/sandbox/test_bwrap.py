"""Tests of what is particular to the bubblewrap backend: its cgroups and
its refusals (bubblewrap missing, no memory cgroup). What every backend must contain is in
test_containment.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from codeyard.config import Settings
from codeyard.sandbox import (
    BwrapSandbox,
    Limits,
    MiB,
    SandboxUnavailable,
    bwrap,
    cgroups,
    default_sandbox,
)
from codeyard.sandbox.bwrap import PROC_MASKED


def test_missing_bubblewrap_is_refused_with_install_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        BwrapSandbox(bwrap=tmp_path / "bwrap")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap.*not installed"):
        default_sandbox(Settings(sandbox="bwrap"))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pids"):
        Limits(pids=0)
    with pytest.raises(ValueError, match="wall_seconds"):
        Limits(wall_seconds=-1)
    assert Limits().memory_bytes == 2 * 1024 * MiB


def test_cgroup_kill_reaches_every_member(bwrap_sandbox: BwrapSandbox) -> None:
    cgroup = bwrap_sandbox._cgroups.new_run(8, 64 * MiB)
    # joined the way a run joins it: the shell's children are members too
    shell = subprocess.Popen(cgroup.join_argv(["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"]))
    try:
        for _ in range(100):
            if len(cgroup.pids()) >= 3:
                break
            time.sleep(0.02)
        assert len(cgroup.pids()) >= 3
        cgroup.kill()
        assert shell.wait(timeout=5) == -9
        cgroup.remove_blocking()
        assert not any(member.path.exists() for member in cgroup.members)
    finally:
        shell.kill()
        shell.wait()
        cgroup.remove_blocking()


async def test_a_sandbox_bubblewrap_cannot_build_is_refused_not_reported_as_a_run(
    bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    # bubblewrap rejects a /tmp size it cannot parse before it starts anything
    unbuildable = Limits(wall_seconds=20, tmpfs_bytes=2**64)
    with pytest.raises(SandboxUnavailable, match="bubblewrap could not start the command"):
        await bwrap_sandbox.run(tmp_path, ["true"], unbuildable)
    assert (await bwrap_sandbox.run(tmp_path, ["true"], Limits(wall_seconds=20))).ok


def test_without_a_writable_memory_cgroup_bubblewrap_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RLIMIT_AS bounds each process alone: without a memory cgroup the processes of a run
    together could take all the host's memory, so there is no bwrap sandbox then."""
    hierarchies = cgroups._hierarchies
    monkeypatch.setattr(
        cgroups,
        "_hierarchies",
        lambda controller: [] if controller == cgroups.MEMORY else hierarchies(controller),
    )
    with pytest.raises(SandboxUnavailable, match="cannot bound the memory of a sandbox"):
        BwrapSandbox().probe()


# Run in a memory-capped cgroup with no writable memory hierarchy of its own (as in a
# container whose user may not create cgroups): the probe passes, sharing that cap.
IN_A_CAPPED_CGROUP = """
import sys
from codeyard.sandbox import BwrapSandbox, cgroups
unusable = cgroups.CgroupTree.add
def add(self, controller):
    if controller == cgroups.MEMORY:
        raise PermissionError("read-only, as for a container's user")
    return unusable(self, controller)
cgroups.CgroupTree.add = add
sandbox = BwrapSandbox()
sandbox.probe()
print(sandbox.memory_enforcement)
"""


def test_in_a_memory_capped_container_bubblewrap_shares_its_cap(tmp_path: Path) -> None:
    mounts = [mount for mount, v2 in cgroups._hierarchies(cgroups.MEMORY) if not v2]
    if not mounts:
        pytest.skip("needs a cgroup v1 memory hierarchy to make a capped cgroup in")
    capped = mounts[0] / f"codeyard-test-{tmp_path.name}"
    try:
        capped.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        (capped / "memory.limit_in_bytes").write_text(str(768 * MiB))
        shown = subprocess.run(
            [sys.executable, "-c", IN_A_CAPPED_CGROUP],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
            preexec_fn=lambda: (capped / "tasks").write_text("0"),
        )
    finally:
        capped.rmdir()
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"shared:{768 * MiB}"


# What the sandbox's user reaches of the kernel's files in /proc: as root, bubblewrap maps it
# to host uid 0, so file permissions let it read and write what host root may.
PROC_PROBE = """
import os, sys
for name in sys.argv[1:]:
    try:
        with open(name, "rb") as file:
            got = file.read(64)
        print(name, "read", len(got))
    except OSError as exc:
        print(name, "refused:", exc.strerror)
for name in ("/proc/irq/default_smp_affinity", "/proc/sysrq-trigger"):
    try:
        os.open(name, os.O_WRONLY)
        print(name, "OPEN FOR WRITING")
    except OSError as exc:
        print(name, "unwritable:", exc.strerror)
"""


async def test_the_kernel_s_files_in_proc_are_out_of_reach(
    bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    """The host's physical memory state (/proc/kpageflags), the kernel heap (/proc/slabinfo)
    and its addresses (/proc/vmallocinfo) were readable as root; /proc/irq and, on kernels
    with it, /proc/sysrq-trigger (a reboot in one character) writable."""
    (tmp_path / "probe.py").write_text(PROC_PROBE)
    masked = [name for name in PROC_MASKED if Path(name).exists()]
    assert masked  # (this kernel has some: the check checks something)
    command = ["python3", "probe.py", *masked]
    outcome = await bwrap_sandbox.run(tmp_path, command, Limits(wall_seconds=60))

    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert not [line for line in lines if " read " in line], outcome.output
    assert len([line for line in lines if " refused: " in line]) == len(masked)
    assert "OPEN FOR WRITING" not in outcome.output


def test_a_failed_check_of_the_sandbox_is_made_again_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failed once for a passing reason (its time limit on a loaded machine), the check was
    remembered for the worker's life, which refused every run until it was restarted."""
    sandbox = BwrapSandbox()
    real, calls = sandbox._probe, []

    def failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SandboxUnavailable("bubblewrap did not answer in time")
        real()

    monkeypatch.setattr(sandbox, "_probe", failing_once)
    with pytest.raises(SandboxUnavailable, match="did not answer in time"):
        sandbox.probe()
    with pytest.raises(SandboxUnavailable, match="did not answer in time"):
        sandbox.probe()  # remembered a while: no bubblewrap started for each run meanwhile
    assert len(calls) == 1
    monkeypatch.setattr(bwrap, "PROBE_RETRY_SECONDS", 0.0)
    sandbox.probe()  # made again: it passes
    sandbox.probe()
    assert len(calls) == 2
