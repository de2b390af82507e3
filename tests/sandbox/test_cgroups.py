"""Tests of the cgroups of a run (`codeyard.sandbox.cgroups`). Real cgroups where this machine
has them writable (through the bwrap sandbox's, skipped otherwise); what only cgroup v2 has is
shown on files laid out as the kernel lays them out."""

from __future__ import annotations

import subprocess
from pathlib import Path

from codeyard.sandbox import BwrapSandbox, MiB
from codeyard.sandbox.cgroups import MEMORY, RunCgroup, RunCgroups, _cap_memory


def _memory_cap_file(cgroup: RunCgroup) -> Path:
    return cgroup.path / ("memory.max" if cgroup.v2 else "memory.limit_in_bytes")


def test_a_run_gets_the_memory_cap_asked_for(bwrap_sandbox: BwrapSandbox) -> None:
    run = bwrap_sandbox._cgroups.new_run(8, 96 * MiB)
    try:
        assert int(_memory_cap_file(run.by_controller[MEMORY]).read_text()) == 96 * MiB
    finally:
        run.remove_blocking()


def test_a_cap_beyond_what_the_kernel_keeps_is_not_wrapped_to_zero(
    bwrap_sandbox: BwrapSandbox,
) -> None:
    # Limits of 2**64 bytes are valid; written as such, cgroup v1 would wrap them to a cap of 0.
    run = bwrap_sandbox._cgroups.new_run(8, 2**64)
    try:
        cap = _memory_cap_file(run.by_controller[MEMORY]).read_text().strip()
        assert cap == "max" or int(cap) > 2**62
    finally:
        run.remove_blocking()


def test_a_v2_run_is_capped_with_swap_off(tmp_path: Path) -> None:
    (tmp_path / "memory.swap.max").write_text("max\n")
    _cap_memory(tmp_path, v2=True, memory_max=64 * MiB)
    assert (tmp_path / "memory.max").read_text() == str(64 * MiB)
    assert (tmp_path / "memory.swap.max").read_text() == "0"


def test_only_the_oom_killer_counts_as_hitting_the_memory_cap(tmp_path: Path) -> None:
    """At the cap the kernel first reclaims the run's page cache ("max" counts those times);
    the cap was hit when that was not enough and a process was killed."""
    v2 = RunCgroup(tmp_path / "v2", v2=True)
    v2.path.mkdir()
    events = v2.path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 0\noom_kill 0\noom_group_kill 0\n")
    assert not v2.memory_hit()
    events.write_text("low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert v2.memory_hit()
    v1 = RunCgroup(tmp_path / "v1", v2=False)
    v1.path.mkdir()
    (v1.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert v1.memory_hit()


def test_a_run_with_no_cgroup_to_join_runs_its_command_as_it_is() -> None:
    """No cgroup is writable for codeyard's user in the compose and Kubernetes containers: the
    shell that joins them was given an empty list (` && shift 0 && exec "$@"`), a syntax
    error, and every sandboxed run failed, the coordinator's start-up probe first."""
    argv = RunCgroups({}).join_argv(["/bin/echo", "ran"])
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")
