"""Looking at the host from the tests: processes a sandbox may have left behind."""

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
