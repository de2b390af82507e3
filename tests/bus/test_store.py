"""Optimistic concurrency on KV: a write must name the revision it replaces."""

from __future__ import annotations

import pytest

from codeyard.bus import Bus, StaleRevision
from codeyard.bus.subjects import RUNS_BUCKET
from codeyard.schemas import Run, RunState


async def test_update_with_a_stale_revision_is_refused(bus: Bus) -> None:
    runs = await bus.store(RUNS_BUCKET, Run)
    first = await runs.create("run1", Run(run_id="run1", goal="add auth"))

    current = await runs.get("run1")
    assert current is not None
    assert current.revision == first
    second = await runs.update(
        "run1", Run(run_id="run1", goal="add auth", state=RunState.EXECUTING), first
    )
    assert second > first

    with pytest.raises(StaleRevision, match="run1 changed since revision"):
        await runs.update("run1", Run(run_id="run1", goal="lost update"), first)
    latest = await runs.get("run1")
    assert latest is not None
    assert latest.value.state is RunState.EXECUTING
    assert latest.revision == second


async def test_create_refuses_an_existing_key_and_get_misses_cleanly(bus: Bus) -> None:
    runs = await bus.store(RUNS_BUCKET, Run)
    assert await runs.get("nope") is None
    assert await runs.keys() == []
    await runs.create("run2", Run(run_id="run2", goal="g"))
    with pytest.raises(StaleRevision):
        await runs.create("run2", Run(run_id="run2", goal="other"))
    assert await runs.keys() == ["run2"]
