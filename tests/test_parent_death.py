"""A child started through codeyard.parent_death gets SIGTERM from the kernel when the process
that started it dies, however it dies: `codeyard up` starts nats-server and the services so,
in sessions of their own, which a Ctrl-C in the terminal no longer reaches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from codeyard.parent_death import PARENT_GONE, tied_to_this_process
from tests.processes import kill

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")


def alive(pid: int) -> bool:
    """Running, not just a zombie waiting for a reaper (pid 1 of a container may never reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_tied_child_is_stopped_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # the parent starts a tied child (which keeps its pid through the exec), says so, and waits
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from codeyard.parent_death import tied_to_this_process
        child = subprocess.Popen(
            tied_to_this_process([sys.executable, "-c", "import time; time.sleep(600)"])
        )
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        while "time.sleep(600)" not in Path(f"/proc/{child}/cmdline").read_text():
            time.sleep(0.01)  # exec'd: the command runs under the trampoline's pid
        parent.kill()  # SIGKILL: the parent cleans nothing up
        parent.wait()
        gone = wait_until_gone(child)
        if not gone:
            os.kill(child, signal.SIGKILL)
        assert gone, "the child outlived its parent"
    finally:
        kill(parent)


def test_a_child_whose_parent_died_before_it_was_tied_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = tied_to_this_process(["touch", str(marker)])
    command[command.index(str(os.getpid()))] = "1"  # as if reparented before it asked
    assert subprocess.run(command, timeout=60).returncode == PARENT_GONE
    assert not marker.exists()


def test_the_command_runs_as_it_would_untied(tmp_path: Path) -> None:
    shown = subprocess.run(
        tied_to_this_process(["sh", "-c", 'echo "$0 $1 $TIED"', "a b", "c"]),
        env=os.environ | {"TIED": "yes"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shown.returncode, shown.stdout) == (0, "a b c yes\n")
