"""Looking at the host from the tests: processes a sandbox may have left behind, and what the
user running them may do."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Lists what the runs of a test left on the host (run cgroups, containers): must be empty.
Leftovers = Callable[[], list[str]]


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line contains `marker` (left over from a sandbox)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


CAP_SYS_RESOURCE = 24


def may_raise_hard_limits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE, which lets it (and an unisolated command it
    starts) raise a hard rlimit. Being root is not enough: a container may withhold it."""
    status = Path("/proc/self/status").read_text().splitlines()
    effective = next(line.split()[1] for line in status if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> CAP_SYS_RESOURCE & 1)
