"""Ready tasks in the order they should start: longest remaining critical path first."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from codeyard.coordinator.graph import TaskGraph


class ReadyQueue:
    """A priority queue of task ids; each id is queued at most once.

    Priority: longest critical path first (as the graph weighs it: in tasks, or by the plan's
    effort estimates, see `effort_weights`), then most direct dependents, then plan order.
    Entries are not removed when a queued task stops being ready (parked, cancelled): `take`
    asks `still_ready` and drops those.
    """

    def __init__(self, graph: TaskGraph) -> None:
        self._graph = graph
        self._heap: list[tuple[float, int, int, str]] = []
        self._queued: set[str] = set()

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._queued

    def push(self, task_id: str) -> None:
        if task_id in self._queued:
            return
        graph = self._graph
        key = (
            -graph.critical_path(task_id),
            -len(graph.dependents(task_id)),
            graph.index(task_id),
            task_id,
        )
        heapq.heappush(self._heap, key)
        self._queued.add(task_id)

    def take(self, count: int, still_ready: Callable[[str], bool]) -> list[str]:
        """Remove and return up to `count` ready tasks, highest priority first."""
        taken: list[str] = []
        while len(taken) < count and self._heap:
            task_id = heapq.heappop(self._heap)[-1]
            self._queued.discard(task_id)
            if still_ready(task_id):
                taken.append(task_id)
        return taken
