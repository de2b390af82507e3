"""The seccomp filter's installer for sandboxes that cannot be handed a filter (docker): it
runs the command under the filter, or not at all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from codeyard.sandbox.seccomp import NOT_INSTALLED, installing_argv, sandbox_filter

PYTHON = shutil.which("python3", path="/usr/bin:/bin")
pytestmark = pytest.mark.skipif(PYTHON is None, reason="no system python3 to install it with")

RESERVE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY)
print("fallocate:", "reserved" if libc.fallocate(fd, 1, 0, 64 << 20) == 0 else "refused")
sys.exit(3)
"""


def test_the_command_runs_under_the_filter_and_its_exit_status_passes_through(
    tmp_path: Path,
) -> None:
    assert PYTHON is not None
    command = [PYTHON, "-c", RESERVE, str(tmp_path / "file")]
    ran = subprocess.run(
        installing_argv(PYTHON, sandbox_filter(), command), capture_output=True, text=True
    )
    assert (ran.returncode, ran.stdout) == (3, "fallocate: refused\n"), ran.stderr


def test_without_the_filter_nothing_runs(tmp_path: Path) -> None:
    """A program the kernel refuses (here one with no return instruction) stops the installer
    before the command: it never runs unfiltered."""
    assert PYTHON is not None
    marker = tmp_path / "ran"
    command = [PYTHON, "-c", f"open({str(marker)!r}, 'w')"]
    ran = subprocess.run(installing_argv(PYTHON, bytes(8), command), capture_output=True, text=True)
    assert ran.returncode == NOT_INSTALLED
    assert "cannot install the seccomp filter: Invalid argument" in ran.stderr
    assert not marker.exists()
