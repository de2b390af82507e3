"""Tests of the process backend for what it promises: refusal without an explicit opt-in, and
the limits (wall time, CPU, memory, file size, open files, output, processes), killing what
the command leaves behind. It isolates nothing, so the containment tests do not apply to it."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from codeyard.sandbox import Limits, MiB, ProcessSandbox, SandboxUnavailable
from tests.sandbox.host import may_raise_hard_limits, processes_with
from tests.sandbox.workloads import (
    FAST,
    OPEN_TOO_MANY_FILES,
    SLACK_SECONDS,
    assert_refused_files_beyond,
    run_python,
    write_package,
)


@pytest.fixture(scope="module")
def process_sandbox() -> ProcessSandbox:
    return ProcessSandbox(opt_in=True)


def test_it_is_refused_without_an_explicit_opt_in_saying_why() -> None:
    with pytest.raises(SandboxUnavailable) as refused:
        ProcessSandbox()
    message = str(refused.value)
    assert "without a sandbox" in message
    assert "network" in message
    assert "read and write every file" in message
    assert "pass opt_in=True" in message  # said to a program; to a configuration, see selection


async def test_exit_codes_signals_and_missing_commands(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    assert (await run_python(process_sandbox, tmp_path, "import sys; sys.exit(3)")).exit_code == 3
    killed = await run_python(process_sandbox, tmp_path, "import os; os.kill(os.getpid(), 15)")
    assert killed.exit_code == 128 + 15
    missing = await process_sandbox.run(tmp_path, ["no-such-command-here"], FAST)
    assert missing.exit_code == 127
    assert "no-such-command-here" in missing.output


async def test_environment_is_minimal_with_a_private_home(
    process_sandbox: ProcessSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEYARD_HOST_SECRET", "do-not-leak")
    code = """
        import os, sys
        print(sorted(os.environ))
        print("home", os.environ["HOME"])
        print("cwd", os.getcwd())
        print("python", sys.executable)
    """
    outcome = await run_python(process_sandbox, tmp_path, code, env={"FOO": "bar"})
    assert outcome.exit_code == 0, outcome.output
    assert "CODEYARD_HOST_SECRET" not in outcome.output
    assert "'FOO'" in outcome.output
    home = outcome.output.split("home ")[1].split()[0]
    assert home != os.environ.get("HOME")
    assert not Path(home).exists()  # removed after the run
    assert f"cwd {tmp_path.resolve()}" in outcome.output
    assert Path(sys.executable).parent.name in outcome.output  # our interpreter, as `python`


async def test_the_wall_time_kills_the_whole_process_group(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    marker = f"process-loop-{uuid.uuid4().hex}"
    code = """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "while True: pass", sys.argv[1]])
        print("started", flush=True)
        while True: pass
    """
    limits = Limits(wall_seconds=1.0, memory_bytes=512 * MiB, pids=16)
    outcome = await run_python(process_sandbox, tmp_path, code, marker, limits=limits)
    assert outcome.timed_out
    assert outcome.exit_code == 137
    assert outcome.killed_by_limit == "wall_time"
    assert 1.0 <= outcome.duration_seconds < 1.0 + SLACK_SECONDS
    assert "started" in outcome.output
    assert processes_with(marker) == []


async def test_background_processes_do_not_outlive_the_run(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    marker = f"process-orphan-{uuid.uuid4().hex}"
    code = """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("left one behind")
    """
    outcome = await run_python(process_sandbox, tmp_path, code, marker)
    assert outcome.exit_code == 0, outcome.output
    for _ in range(100):
        if not processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker) == []


async def test_cpu_memory_and_file_size_limits(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    limits = Limits(
        wall_seconds=30, cpu_seconds=1, memory_bytes=256 * MiB, file_size_bytes=1 * MiB, pids=16
    )
    busy = await run_python(process_sandbox, tmp_path, "while True: pass", limits=limits)
    assert (busy.exit_code, busy.killed_by_limit, busy.timed_out) == (128 + 24, "cpu", False)
    hoard = "h = []\nwhile True: h.append(bytearray(16 * 1024 * 1024))"
    memory = await run_python(process_sandbox, tmp_path, hoard, limits=limits)
    assert memory.exit_code == 1
    assert "MemoryError" in memory.output
    assert memory.killed_by_limit == "memory"
    big = await run_python(
        process_sandbox, tmp_path, "open('big', 'wb').write(b'x' * 3_000_000)", limits=limits
    )
    assert big.killed_by_limit == "file_size"
    assert (tmp_path / "big").stat().st_size <= 1 * MiB


async def test_opening_more_files_than_allowed_fails_with_emfile(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    limits = Limits(wall_seconds=10, memory_bytes=256 * MiB, pids=16, open_files=64)
    outcome = await run_python(process_sandbox, tmp_path, OPEN_TOO_MANY_FILES, limits=limits)
    assert_refused_files_beyond(outcome.output, 64)
    if may_raise_hard_limits():
        # Nothing is isolated: the command has codeyard's privileges, so it may raise its own
        # limits (UNSANDBOXED_RISKS says so); then it opens the file it could not.
        assert "RAISED 10000 10000" in outcome.output
        assert outcome.exit_code == 0, outcome.output
    else:
        assert "could not raise it" in outcome.output
        assert outcome.exit_code == 1
        assert outcome.killed_by_limit == "open_files"


async def test_output_is_capped_keeping_the_tail(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    code = "for i in range(200_000): print('line', i)\nprint('THE END')"
    limits = Limits(wall_seconds=30, output_bytes=64 * 1024)
    outcome = await run_python(process_sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0
    assert outcome.output.startswith("[codeyard sandbox: output truncated,")
    assert outcome.output.endswith("line 199999\nTHE END\n")
    assert len(outcome.output) < 64 * 1024 + 200


async def test_number_of_processes_is_bounded(
    process_sandbox: ProcessSandbox, tmp_path: Path
) -> None:
    if process_sandbox.pids_enforcement == "none":
        pytest.skip("root without a writable pids cgroup: processes are not bounded here")
    code = """
        import os, time
        children = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("fork failed:", exc)
        print("children", children, flush=True)
        os._exit(0)
    """
    limits = Limits(wall_seconds=10, memory_bytes=512 * MiB, pids=16)
    outcome = await run_python(process_sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0, outcome.output
    assert "fork failed" in outcome.output
    assert 0 < int(outcome.output.split("children")[1]) < 16


async def test_pytest_of_a_package(process_sandbox: ProcessSandbox, tmp_path: Path) -> None:
    write_package(tmp_path, "add(2, 2) == 5")
    outcome = await process_sandbox.run(
        tmp_path,
        ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        Limits(wall_seconds=60),
    )
    assert outcome.exit_code == 1, outcome.output
    assert "1 failed" in outcome.output


async def test_cancelling_a_run_kills_it(process_sandbox: ProcessSandbox, tmp_path: Path) -> None:
    marker = f"process-cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(
        run_python(process_sandbox, tmp_path, "import time; time.sleep(60)", marker)
    )
    for _ in range(200):
        await asyncio.sleep(0.05)
        if processes_with(marker):
            break
    assert processes_with(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_with(marker) == []


async def test_bad_requests_are_refused(process_sandbox: ProcessSandbox, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="argv list"):
        await process_sandbox.run(tmp_path, "echo hi", FAST)
    with pytest.raises(ValueError, match="refusing"):
        await process_sandbox.run(Path("/"), ["true"], FAST)
