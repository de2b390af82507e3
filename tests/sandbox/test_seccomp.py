"""The seccomp filter's installer for sandboxes that cannot be handed a filter (docker): it
runs the command under the filter, or not at all."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from codeyard.sandbox.protocol import SandboxUnavailable
from codeyard.sandbox.seccomp import NOT_INSTALLED, checked_number, installing_argv, sandbox_filter

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


def test_a_call_the_architecture_lacks_is_no_reason_to_refuse_the_sandbox() -> None:
    """arm64 and riscv64 have no chmod: libseccomp names it by a placeholder (below -10000),
    which a rule takes and never meets. Taken for unknown, it made every sandbox unavailable
    there; only -1 is a name libseccomp does not know."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    on_arm64 = lib.seccomp_syscall_resolve_name_arch(0xC00000B7, b"chmod")  # AUDIT_ARCH_AARCH64
    assert on_arm64 < -10_000
    assert checked_number(on_arm64, "chmod") == on_arm64
    with pytest.raises(SandboxUnavailable, match="does not know the system call nosuch"):
        checked_number(-1, "nosuch")
