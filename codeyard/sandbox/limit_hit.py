"""`limit_hit`: which of the `Limits` stopped a run, from what every backend can observe."""

from __future__ import annotations

import signal

from codeyard.sandbox.protocol import LimitName

_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_FORK_SIGNS = ("BlockingIOError", "Resource temporarily unavailable")
_OPEN_FILES_SIGN = "Too many open files"  # EMFILE's message, in Python's OSError and C's perror


def limit_hit(
    exit_code: int,
    timed_out: bool,
    output: str,
    pids_hit: bool | None,
    memory_hit: bool | None = None,
) -> LimitName:
    """Which limit stopped the run. `pids_hit` and `memory_hit` are what the run's cgroups
    say, None without one (then the limit is guessed from the output)."""
    if pids_hit and (timed_out or exit_code != 0):
        return "pids"  # e.g. a fork bomb spinning on failed forks until the wall time
    if timed_out:
        return "wall_time"
    if memory_hit:
        # The OOM killer killed a process of the run: reported even when the command then
        # ended well (a test runner may survive its worker), as the docker backend does.
        return "memory"
    if exit_code == 0:
        return ""
    if exit_code == 128 + signal.SIGXCPU:
        return "cpu"
    end = output[-4000:]
    if exit_code == 128 + signal.SIGXFSZ or "File too large" in end:
        return "file_size"
    if any(sign in end for sign in _MEMORY_SIGNS):
        return "memory"
    if _OPEN_FILES_SIGN in end:
        return "open_files"
    if pids_hit is None and all(sign in end for sign in _FORK_SIGNS):
        return "pids"
    return ""
