"""`limit_hit`: which of the `Limits` stopped a run, from what every backend can observe; and
`limit_header`: that, said for people reading the output of the run."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

from codeyard.sandbox.limits import GiB, Limits, MiB
from codeyard.sandbox.protocol import LimitName, RunOutcome

_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
# A fork refused at the pids limit (EAGAIN), as Python, dash and bash say it.
_FORK_REFUSED = re.compile(
    r"BlockingIOError: \[Errno 11\] Resource temporarily unavailable"
    r"|^(?:/bin/)?sh: \d+: Cannot fork$"
    r"|fork: (?:retry: )?Resource temporarily unavailable$",
    re.MULTILINE,
)
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
    if pids_hit:
        # e.g. a fork bomb spinning on failed forks until the wall time; reported also when
        # the command then ended well (a test may swallow the failed fork), as memory is
        return "pids"
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
    if pids_hit is None and _FORK_REFUSED.search(end):
        return "pids"
    return ""


def limit_header(outcome: RunOutcome, limits: Limits) -> str:
    """The line saying which limit of the sandbox the run hit; "" when it hit none."""
    hit: LimitName = outcome.killed_by_limit or ("wall_time" if outcome.timed_out else "")
    if not hit:
        return ""
    line = f"sandbox limit hit: {_LIMITS[hit](limits)}"
    if outcome.timed_out:
        line = f"timed out: {line}"
    elif outcome.exit_code == 0:
        line += "; the tests fail although the test command exited 0"
    return line + "\n"


def _size(size: int) -> str:
    return f"{size / GiB:.3g} GiB" if size >= GiB else f"{size / MiB:.3g} MiB"


_LIMITS: dict[LimitName, Callable[[Limits], str]] = {
    "wall_time": lambda limits: f"wall time ({limits.wall_seconds:g} s)",
    "cpu": lambda limits: f"CPU time ({limits.cpu_seconds} s per process)",
    "memory": lambda limits: f"memory ({_size(limits.memory_bytes)} per process)",
    "pids": lambda limits: f"processes ({limits.pids} processes and threads)",
    "file_size": lambda limits: f"file size ({_size(limits.file_size_bytes)} per file)",
    "open_files": lambda limits: f"open files ({limits.open_files} per process)",
    "disk": lambda limits: (
        f"disk (the run must leave {_size(limits.disk_reserve_bytes)} and "
        f"{limits.disk_reserve_inodes} inodes free on the disk of its checkout)"
    ),
}
