"""What the live view of a run shows, as plain data: no I/O, no rendering, no clock.

A `RunView` takes the run's record (from status queries, authoritative but polled) and its
events (prompt, but partial: they carry no titles, dependencies or usage totals), and answers
`rows(now)`: one row per task, placed in the task graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas import (
    Run,
    RunEvent,
    RunState,
    RunStateChanged,
    TaskState,
    TaskStatesChanged,
    Usage,
    UsageReported,
)

FINISHED_TASK_STATES = frozenset({TaskState.MERGED, TaskState.FAILED, TaskState.CANCELLED})
WAITING_RUN_STATES = frozenset({RunState.PLAN_APPROVAL, RunState.AWAITING_APPROVAL})


@dataclass(frozen=True)
class TaskRow:
    """One task as shown: `parent` is the dependency it is drawn under (its deepest one), `depth`
    its distance from the tasks that depend on nothing; `after` the other dependencies."""

    task_id: str
    title: str
    state: TaskState
    attempt: int
    depth: int
    parent: str | None
    after: tuple[str, ...]
    seconds: float | None  # running time so far (or in total, once finished); None: not started
    feedback: int


@dataclass
class _TaskLive:
    title: str = ""
    deps: tuple[str, ...] = ()
    state: TaskState = TaskState.PLANNED
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    feedback: int = 0
    changed_at: datetime | None = None  # of the newest event applied to it


@dataclass
class RunView:
    run_id: str
    goal: str = ""
    state: RunState = RunState.PLANNING
    reason: str = ""
    error: str = ""
    _tasks: dict[str, _TaskLive] = field(default_factory=dict)  # in plan order
    _usage: Usage = field(default_factory=Usage)
    # reported by events after the last status, which does not count them yet
    _usage_since_status: Usage = field(default_factory=Usage)

    # --- inputs -------------------------------------------------------------------------------

    def update(self, run: Run) -> None:
        """The run's record, as a status query returned it. Task state from events newer than
        the record wins: the record may have been read just before they happened."""
        self.goal = run.goal
        self.state = run.state
        self.error = run.error
        self._usage = run.usage
        self._usage_since_status = Usage()
        for task_id, task in run.tasks.items():
            live = self._tasks.setdefault(task_id, _TaskLive())
            live.title = task.spec.title
            live.deps = tuple(task.spec.deps)
            live.feedback = len(task.feedback)
            live.started_at = task.started_at or live.started_at
            live.finished_at = task.finished_at
            if live.changed_at is None or live.changed_at <= run.updated_at:
                live.state = task.state
                live.attempt = task.attempt

    def apply(self, event: RunEvent) -> None:
        match event:
            case RunStateChanged():
                self.state = event.state
                self.reason = event.reason
            case TaskStatesChanged():
                for change in event.changes:
                    live = self._tasks.setdefault(change.task_id, _TaskLive())
                    live.state = change.state
                    live.attempt = change.attempt
                    live.changed_at = event.sent_at
                    if change.state is TaskState.CODING and live.started_at is None:
                        live.started_at = event.sent_at
                    if change.state in FINISHED_TASK_STATES:
                        live.finished_at = event.sent_at
                    else:
                        live.finished_at = None
            case UsageReported():
                self._usage_since_status = self._usage_since_status + event.usage
            case _:
                pass

    # --- outputs ------------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        return self._usage + self._usage_since_status

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_RUN_STATES

    @property
    def waiting_for_a_person(self) -> bool:
        return self.state in WAITING_RUN_STATES or any(
            task.state is TaskState.AWAITING_APPROVAL for task in self._tasks.values()
        )

    @property
    def total(self) -> int:
        return len(self._tasks)

    @property
    def merged(self) -> int:
        return sum(task.state is TaskState.MERGED for task in self._tasks.values())

    def rows(self, now: datetime) -> list[TaskRow]:
        """Every task once, parents before children, siblings in plan order."""
        depth = self._depths()
        rows: dict[str, TaskRow] = {}
        for task_id, task in self._tasks.items():
            deps = [dep for dep in task.deps if dep in self._tasks]
            parent = max(deps, key=lambda dep: depth[dep]) if deps else None
            seconds = None
            if task.started_at is not None:
                seconds = max(0.0, ((task.finished_at or now) - task.started_at).total_seconds())
            rows[task_id] = TaskRow(
                task_id=task_id,
                title=task.title,
                state=task.state,
                attempt=task.attempt,
                depth=depth[task_id],
                parent=parent,
                after=tuple(dep for dep in deps if dep != parent),
                seconds=seconds,
                feedback=task.feedback,
            )
        children: dict[str, list[TaskRow]] = {}  # each task's, in plan order
        for row in rows.values():
            if row.parent is not None:
                children.setdefault(row.parent, []).append(row)
        ordered: dict[str, TaskRow] = {}

        def place(top: TaskRow) -> None:
            """`top`, then the tasks under it, depth first: with a stack rather than recursion,
            as the coordinator takes chains deeper than Python's recursion limit."""
            stack = [top]
            while stack:
                row = stack.pop()
                if row.task_id in ordered:  # only in a cycle
                    continue
                ordered[row.task_id] = row
                stack.extend(reversed(children.get(row.task_id, [])))  # the first on top

        for row in rows.values():
            if row.parent is None:
                place(row)
        for row in rows.values():  # only in a cycle: shown at the top rather than not at all
            if row.task_id not in ordered:
                place(row)
        return list(ordered.values())

    def _depths(self) -> dict[str, int]:
        """Longest chain of dependencies below each task (a cycle, which the coordinator
        refuses anyway, counts as depth 0 rather than looping). Depth first with a stack of
        its own rather than recursion, as the coordinator takes chains of any depth."""
        depths: dict[str, int] = {}
        for root in self._tasks:
            if root in depths:
                continue
            # one frame per task being measured: its dependencies still to look at, and the
            # deepest of those looked at (-1: none yet, so a task with none has depth 0)
            stack: list[tuple[str, Iterator[str]]] = [(root, self._deps_of(root))]
            deepest = {root: -1}
            while stack:
                task_id, pending = stack[-1]
                for dep in pending:
                    if dep in depths:
                        deepest[task_id] = max(deepest[task_id], depths[dep])
                    elif dep in deepest:  # being measured: a cycle
                        deepest[task_id] = max(deepest[task_id], 0)
                    else:  # measured first; this frame goes on from the next one after
                        stack.append((dep, self._deps_of(dep)))
                        deepest[dep] = -1
                        break
                else:
                    stack.pop()
                    depths[task_id] = deepest.pop(task_id) + 1
                    if stack:
                        dependent = stack[-1][0]
                        deepest[dependent] = max(deepest[dependent], depths[task_id])
        return depths

    def _deps_of(self, task_id: str) -> Iterator[str]:
        return (dep for dep in self._tasks[task_id].deps if dep in self._tasks)
