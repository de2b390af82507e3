"""Tests of `supervise` itself, with a command that is not run but told how it ends."""

from __future__ import annotations

import time
from pathlib import Path

from codeyard.sandbox import Limits
from codeyard.sandbox.disk_guard import free_bytes
from codeyard.sandbox.output import OutputTail
from codeyard.sandbox.supervision import supervise


class _EndedAtOnce:
    """A command that has already ended well."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.output = OutputTail(1024)

    async def output_closed(self) -> None:
        pass

    async def exit_status(self) -> int:
        return 0

    async def kill(self) -> None:
        raise AssertionError("a command that ended is not killed")

    def pids_hit(self) -> None:
        return None

    def memory_hit(self) -> None:
        return None


async def test_a_run_that_ended_before_the_guard_looked_again_is_still_reported(
    tmp_path: Path,
) -> None:
    """A run creating empty files in a tmpfs workdir makes ~43,000 between two polls of the
    disk guard, so it can use up the reserve and end unseen: it is reported all the same."""
    limits = Limits(disk_reserve_bytes=free_bytes(tmp_path) + 1)
    outcome = await supervise(_EndedAtOnce(), limits, tmp_path)
    assert outcome.exit_code == 0
    assert outcome.killed_by_limit == "disk"
    assert "were left free on the disk of the workdir when the run ended" in outcome.output
    assert not outcome.ok
