"""The task graph of a plan: which task waits for which, checked once when the plan arrives.

A plan is valid when it has at least one task, every id is unique, every dependency names a
task of the plan (and not the task itself), no chain of dependencies loops back, and no task is
larger than `MAX_TASK_BYTES`. Everything here is iterative, so plans of tens of thousands of
tasks or chains that deep are fine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from codeyard.schemas.model import TaskSpec

# Of one task, as JSON. Every work item and record of a task carries it, beside up to 256 KiB
# of feedback, a patch and the test output: a larger one could make them too big to send,
# and the task could never be worked on.
MAX_TASK_BYTES = 64 * 1024


class InvalidPlan(ValueError):
    """A plan that cannot be executed. `problems` lists each defect; the message joins them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid plan: " + "; ".join(self.problems))


class TaskGraph:
    """An immutable, validated dependency graph over the tasks of one plan.

    `weights` (task id -> expected effort, default 1) only affects `critical_path`.
    `limit_size`: False for a plan accepted before, which is not refused afterwards.
    """

    def __init__(
        self,
        specs: Iterable[TaskSpec],
        weights: Mapping[str, float] | None = None,
        *,
        limit_size: bool = True,
    ) -> None:
        specs = list(specs)
        self._specs: dict[str, TaskSpec] = {}
        self._deps: dict[str, tuple[str, ...]] = {}
        problems: list[str] = []
        if not specs:
            problems.append("the plan has no tasks")
        for spec in specs:
            if spec.id in self._specs:
                problems.append(f"duplicate task id {spec.id!r}")
                continue
            self._specs[spec.id] = spec
            if limit_size and (size := len(msgspec.json.encode(spec))) > MAX_TASK_BYTES:
                problems.append(
                    f"task {spec.id!r} is {size} bytes as JSON; at most {MAX_TASK_BYTES}"
                )
            # Repeating a dependency is harmless: keep the first mention of each.
            self._deps[spec.id] = tuple(dict.fromkeys(spec.deps))
        for task_id, deps in self._deps.items():
            for dep in deps:
                if dep == task_id:
                    problems.append(f"task {task_id!r} depends on itself")
                elif dep not in self._specs:
                    problems.append(f"task {task_id!r} depends on unknown task {dep!r}")
        weights = weights or {}
        for task_id, weight in weights.items():
            if task_id not in self._specs:
                problems.append(f"weight given for unknown task {task_id!r}")
            elif not weight >= 0:  # also refuses NaN
                problems.append(f"task {task_id!r} has negative weight {weight!r}")
        if problems:
            raise InvalidPlan(problems)

        self._index = {task_id: i for i, task_id in enumerate(self._specs)}
        dependents: dict[str, list[str]] = {task_id: [] for task_id in self._specs}
        for task_id, deps in self._deps.items():
            for dep in deps:
                dependents[dep].append(task_id)
        self._dependents = {task_id: tuple(ids) for task_id, ids in dependents.items()}
        self._order = self._sort()
        self._critical = self._critical_paths(weights)

    # --- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._specs

    def __iter__(self) -> Iterator[str]:
        """Task ids in plan order."""
        return iter(self._specs)

    def spec(self, task_id: str) -> TaskSpec:
        return self._specs[task_id]

    def index(self, task_id: str) -> int:
        """Position of the task in the plan as written (a stable tie-breaker)."""
        return self._index[task_id]

    def deps(self, task_id: str) -> tuple[str, ...]:
        """Tasks that must be merged before `task_id` may start."""
        return self._deps[task_id]

    def dependents(self, task_id: str) -> tuple[str, ...]:
        """Tasks that directly wait for `task_id`."""
        return self._dependents[task_id]

    def descendants(self, task_id: str) -> frozenset[str]:
        """Every task that waits for `task_id`, directly or through others."""
        seen: set[str] = set()
        stack = list(self._dependents[task_id])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self._dependents[current])
        return frozenset(seen)

    def roots(self) -> tuple[str, ...]:
        """Tasks without dependencies, in plan order."""
        return tuple(task_id for task_id, deps in self._deps.items() if not deps)

    def topological_order(self) -> tuple[str, ...]:
        """Every task after all of its dependencies; ties keep plan order."""
        return self._order

    def critical_path(self, task_id: str) -> float:
        """Weight of the longest chain that starts at `task_id` (itself included) and follows
        its dependents: how much work at least remains once it starts. Used as priority."""
        return self._critical[task_id]

    def critical_path_length(self) -> float:
        """Weight of the longest dependency chain of the whole plan."""
        return max(self._critical.values())

    # --- construction -------------------------------------------------------------------------

    def _sort(self) -> tuple[str, ...]:
        """Kahn's algorithm; what cannot be sorted lies on or behind a cycle."""
        waiting = {task_id: len(deps) for task_id, deps in self._deps.items()}
        queue = deque(task_id for task_id, count in waiting.items() if count == 0)
        order: list[str] = []
        while queue:
            task_id = queue.popleft()
            order.append(task_id)
            for dependent in self._dependents[task_id]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    queue.append(dependent)
        if len(order) < len(self._specs):
            stuck = {task_id for task_id, count in waiting.items() if count > 0}
            cycle = self._find_cycle(stuck)
            raise InvalidPlan([f"dependency cycle {' -> '.join(cycle)} (each depends on the next)"])
        return tuple(order)

    def _find_cycle(self, stuck: set[str]) -> list[str]:
        """A cycle among tasks Kahn could not sort, as ids with the first repeated at the end.

        Each stuck task still waits for some stuck dependency, so following those from any stuck
        task must come back to a task already on the path.
        """
        start = min(stuck, key=self._index.__getitem__)
        path: list[str] = []
        position: dict[str, int] = {}
        current = start
        while current not in position:
            position[current] = len(path)
            path.append(current)
            current = next(dep for dep in self._deps[current] if dep in stuck)
        return [*path[position[current] :], current]

    def _critical_paths(self, weights: Mapping[str, float]) -> dict[str, float]:
        critical: dict[str, float] = {}
        for task_id in reversed(self._order):
            longest_after = max((critical[d] for d in self._dependents[task_id]), default=0.0)
            critical[task_id] = weights.get(task_id, 1.0) + longest_after
        return critical
