"""Runs of the bubblewrap sandbox are counted by how they ended and timed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from codeyard.sandbox import BwrapSandbox, Limits
from tests.observability.samples import Delta


async def test_runs_count_by_outcome_including_the_limit_that_stopped_them(
    bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    backend = {"backend": "bwrap"}
    delta = Delta(
        ("codeyard_sandbox_runs_total", backend | {"outcome": "ok"}),
        ("codeyard_sandbox_runs_total", backend | {"outcome": "failed"}),
        ("codeyard_sandbox_runs_total", backend | {"outcome": "wall_time"}),
        ("codeyard_sandbox_run_duration_seconds_count", backend),
    )
    limits = Limits(wall_seconds=30)
    assert (await bwrap_sandbox.run(tmp_path, ["true"], limits)).ok
    assert (await bwrap_sandbox.run(tmp_path, ["sh", "-c", "exit 3"], limits)).exit_code == 3
    stopped = await bwrap_sandbox.run(tmp_path, ["sleep", "30"], Limits(wall_seconds=0.5))
    assert stopped.killed_by_limit == "wall_time"

    assert delta("codeyard_sandbox_runs_total", **backend, outcome="ok") == 1
    assert delta("codeyard_sandbox_runs_total", **backend, outcome="failed") == 1
    assert delta("codeyard_sandbox_runs_total", **backend, outcome="wall_time") == 1
    assert delta("codeyard_sandbox_run_duration_seconds_count", **backend) == 3


async def test_a_run_that_could_not_start_counts_as_an_error(
    bwrap_sandbox: BwrapSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the supervising was counted: a run with no process to supervise (out of file
    descriptors, here) was counted nowhere, the very case the `error` outcome is for."""
    error = {"backend": "bwrap", "outcome": "error"}
    delta = Delta(("codeyard_sandbox_runs_total", error))
    bwrap_sandbox.probe()  # (its own bubblewrap run is made now, not under the failure below)

    async def no_process(*args: object, **kwargs: object) -> object:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_process)
    with pytest.raises(OSError, match="Too many open files"):
        await bwrap_sandbox.run(tmp_path, ["true"], Limits(wall_seconds=30))

    assert delta("codeyard_sandbox_runs_total", **error) == 1
