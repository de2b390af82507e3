"""The merge step: `Integrator` turns an approved attempt into a commit on the result branch."""

from __future__ import annotations

from typing import Protocol

from codeyard.coordinator.events import Integrated, Merged, MergeFailed, ParkTask
from codeyard.schemas.model import RepoRef, Run, TaskState


class Integrator(Protocol):
    def inline(self, run: Run) -> bool:
        """True when merging touches nothing outside the run record: the coordinator then
        applies the merge in the same step as the approval, not after that step is durable."""
        ...

    async def prepare(self, run: Run) -> RepoRef:
        """Set up a newly submitted run's workspace; where workers find its code."""
        ...

    async def merge(self, run: Run, task_id: str, attempt: int) -> Merged | MergeFailed | ParkTask:
        """Apply the task's approved patch to the run's integration head."""
        ...

    async def integrate(self, run: Run) -> Integrated:
        """Every task is merged: finish the result branch. `Integrated(ok=False)` when it can
        never be delivered; raises when it may be on another try (the coordinator retries)."""
        ...


class LedgerIntegrator:
    """Records merges in the run (the task's state and stored patch) and writes no git branch.

    This is what the coordinator uses until a workspace is attached: the task graph, ordering
    and delivery guarantees are exercised in full, but no repository is touched.
    """

    def inline(self, run: Run) -> bool:
        return True

    async def prepare(self, run: Run) -> RepoRef:
        return run.repo

    async def merge(self, run: Run, task_id: str, attempt: int) -> Merged | MergeFailed | ParkTask:
        return Merged(task_id, attempt)

    async def integrate(self, run: Run) -> Integrated:
        merged = sum(task.state is TaskState.MERGED for task in run.tasks.values())
        return Integrated(ok=True, report=f"{merged} tasks merged")
