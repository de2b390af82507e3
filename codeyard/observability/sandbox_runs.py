"""Counting sandboxed commands by backend and how they ended, and timing them."""

from __future__ import annotations

from collections.abc import Awaitable

from codeyard.observability.metrics import SANDBOX_RUNS, SANDBOX_SECONDS
from codeyard.sandbox.protocol import RunOutcome


def outcome_label(outcome: RunOutcome) -> str:
    """ok, the limit that stopped the run, or failed (a non-zero exit of the command itself)."""
    if outcome.killed_by_limit:
        return outcome.killed_by_limit
    if outcome.timed_out:
        return "wall_time"
    return "ok" if outcome.exit_code == 0 else "failed"


async def counted(backend: str, supervised: Awaitable[RunOutcome]) -> RunOutcome:
    """`supervised`'s outcome, counted; a run the sandbox itself could not carry out counts as
    `error` (a cancelled one not at all: nobody learns how it ended)."""
    try:
        outcome = await supervised
    except Exception:
        SANDBOX_RUNS.labels(backend, "error").inc()
        raise
    SANDBOX_RUNS.labels(backend, outcome_label(outcome)).inc()
    SANDBOX_SECONDS.labels(backend).observe(outcome.duration_seconds)
    return outcome
