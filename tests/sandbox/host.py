"""Looking at the host from the tests: processes a sandbox may have left behind, and what the
user running them may do."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


KEY_SPEC_SESSION_KEYRING = -3
KEYCTL_INVALIDATE = 21
_KEY_CALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl


@contextmanager
def keyring_holding(description: str) -> Iterator[bool]:
    """This process's session keyring holding a key named `description` for the duration;
    whether it could be added (a container may refuse keyrings)."""
    add_key, keyctl = _KEY_CALLS.get(platform.machine(), (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    serial = -1
    if add_key:
        serial = libc.syscall(
            add_key,
            b"user",
            description.encode(),
            b"data",
            ctypes.c_size_t(4),
            ctypes.c_long(KEY_SPEC_SESSION_KEYRING),
        )
    try:
        yield serial >= 0
    finally:
        if serial >= 0:
            libc.syscall(keyctl, ctypes.c_long(KEYCTL_INVALIDATE), ctypes.c_long(serial))
