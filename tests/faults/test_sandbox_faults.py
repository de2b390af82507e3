"""A sandboxed command filling its disk while a run is in flight: the limits stop it, nothing
lands on the host outside the workspace, the sandbox serves the next command, and the run
completes.

The fill runs in the real sandbox (`default_sandbox()`: docker, else bwrap) from the test
process rather than from a scripted tester: scripted workers run no sandbox, and what a full
sandbox could break is the host (its disk) and the next command, not the bus protocol, which
the other fault tests cover. The run alongside shows the host keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.sandbox import (
    Limits,
    MiB,
    RunOutcome,
    Sandbox,
    SandboxUnavailable,
    default_sandbox,
)
from tests.coordinator.harness import processes, submit
from tests.faults.harness import assert_recovered, fault, plan, wait_mid_run, worker_options

LIMITS = Limits(
    wall_seconds=60, file_size_bytes=1 * MiB, tmpfs_bytes=4 * MiB, memory_bytes=256 * MiB, pids=16
)
# What the fill tries to write outside the workspace: far more than the host's disk usage moves
# by itself in a few seconds, so had it landed there, the host would show it.
ATTEMPTED_OUTSIDE_MIB = 1024


def fill(target: str, max_files: int) -> list[str]:
    """A shell command writing 1 MiB files to `target` until a write fails (or `max_files`)."""
    script = (
        f"i=0; while [ $i -lt {max_files} ] && head -c {MiB} /dev/zero > {target}$i; "
        'do i=$((i+1)); done; echo "wrote $i files"'
    )
    return ["sh", "-c", script]


def files_written(outcome: RunOutcome) -> int:
    """How many files a `fill` command wrote in full (its errors may come after in the output:
    stdout and stderr are interleaved as they arrive)."""
    found = re.search(r"wrote (\d+) files", outcome.output)
    assert found, outcome.output
    return int(found[1])


async def real_sandbox() -> Sandbox:
    try:
        return await asyncio.to_thread(default_sandbox)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")


async def test_a_sandbox_filling_its_disk_is_stopped_and_keeps_serving(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    sandbox = await real_sandbox()
    specs = plan(seed=26)
    log = tmp_path / "work.log"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with fault("fill the disk of a sandbox") as recovery:
        async with processes(nats_server.url) as children:
            await children.coordinator("coord-a")
            for _ in range(2):
                await children.worker(*worker_options(log))
            run_id = await submit(bus, specs)

            recovery.inject(await wait_mid_run(bus, run_id))
            recovered = recovery.watch(bus, run_id)
            host_used = shutil.disk_usage(tmp_path).used
            # one file past RLIMIT_FSIZE in the workspace: killed by the file size limit
            too_big = ["sh", "-c", f"head -c {8 * MiB} /dev/zero > big"]
            big = await sandbox.run(workspace, too_big, LIMITS)
            # file after file in the capped /tmp (a tmpfs), then in the read-only root
            tmp = await sandbox.run(workspace, fill("/tmp/fill", ATTEMPTED_OUTSIDE_MIB), LIMITS)
            root = await sandbox.run(workspace, fill("/fill", ATTEMPTED_OUTSIDE_MIB), LIMITS)
            host_growth = shutil.disk_usage(tmp_path).used - host_used
            after = await sandbox.run(workspace, ["sh", "-c", "echo serving > ok; cat ok"], LIMITS)
            run = await recovered

        assert big.killed_by_limit == "file_size", big
        assert (workspace / "big").stat().st_size <= LIMITS.file_size_bytes
        assert "No space left on device" in tmp.output, tmp
        assert "Read-only file system" in root.output, root
        # the tmpfs took its 4 MiB and no more; the root took nothing
        assert files_written(tmp) <= LIMITS.tmpfs_bytes // MiB
        assert files_written(root) == 0
        assert host_growth < ATTEMPTED_OUTSIDE_MIB // 2 * MiB, host_growth
        assert sorted(path.name for path in workspace.iterdir()) == ["big", "ok"]

        assert after.ok, after
        assert after.output.strip() == "serving"
        await assert_recovered(bus, run_id, run, specs)
        assert not recovery.finished_twice(log)
