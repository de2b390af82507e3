"""`build_report`: what a run's report says, from the run's final record and its events.

No I/O and no clock: the same run and events always give the same report. Events are at least
once (a coordinator failover may report a transition again), so repeated ones are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas.messages import (
    GateAudit,
    RunEvent,
    RunStateChanged,
    TaskStatesChanged,
    UsageReported,
)
from codeyard.schemas.model import Feedback, Run, RunState, Task, TaskState, Usage
from codeyard.workspace.integration import result_branch

# Long untrusted text (test output, gate details such as whole diffs) is cut to its end for
# test output, where failures are reported last, and to its start for details.
TEST_OUTPUT_CHARS = 4000
GATE_DETAIL_CHARS = 400

E = TypeVar("E", bound=RunEvent)


@dataclass(frozen=True)
class Transition:
    attempt: int
    state: TaskState
    previous: TaskState | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class GateEntry:
    attempt: int
    role: str
    action: str
    detail: str
    decision: str
    rule: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class RoleUsage:
    role: str
    usage: Usage
    models: tuple[str, ...]  # that answered the role's calls, sorted; () when none was named


@dataclass(frozen=True)
class TaskReport:
    task_id: str
    title: str
    description: str
    deps: tuple[str, ...]
    state: TaskState
    attempts: int
    depth: int
    error: str
    started_at: datetime | None
    finished_at: datetime | None
    feedback: tuple[Feedback, ...]
    test_output: str
    transitions: tuple[Transition, ...]
    gates: tuple[GateEntry, ...]

    @property
    def duration(self) -> timedelta | None:
        return _between(self.started_at, self.finished_at)


@dataclass(frozen=True)
class RunReport:
    run_id: str
    goal: str
    state: RunState
    error: str
    repo_path: str
    result_branch: str
    test_command: str  # the run's; "": detected in the repository
    created_at: datetime
    finished_at: datetime | None
    usage: Usage
    usage_by_role: tuple[RoleUsage, ...]  # by role name
    run_states: tuple[RunStateChanged, ...]
    tasks: tuple[TaskReport, ...]  # by depth, then plan order
    edges: tuple[tuple[str, str], ...]  # (dependency, task)
    run_gates: tuple[GateEntry, ...]  # checks about no task, such as the plan

    @property
    def duration(self) -> timedelta | None:
        return _between(self.created_at, self.finished_at)

    @property
    def models_named(self) -> bool:
        """Whether any role's usage names its model (older workers' results do not)."""
        return any(role.models for role in self.usage_by_role)

    @property
    def layers(self) -> tuple[tuple[TaskReport, ...], ...]:
        """The tasks grouped by dependency depth: layer 0 depends on nothing."""
        # one pass: a 10,000-task chain has 10,000 layers (a pass per layer froze the dashboard)
        layers: list[list[TaskReport]] = []
        for task in self.tasks:
            layers.extend([] for _ in range(task.depth + 1 - len(layers)))
            layers[task.depth].append(task)
        return tuple(tuple(layer) for layer in layers)


def build_report(run: Run, events: Sequence[RunEvent]) -> RunReport:
    mine = [event for event in events if not event.run_id or event.run_id == run.run_id]
    depths = dependency_depths(run.tasks)
    transitions = _transitions(mine)
    gates = _gates(mine)
    order = {task_id: index for index, task_id in enumerate(run.tasks)}
    tasks = sorted(run.tasks.values(), key=lambda task: (depths[task.spec.id], order[task.spec.id]))
    delivered = run.state is RunState.DONE  # only a finished run has its branch in the repo
    return RunReport(
        run_id=run.run_id,
        goal=run.goal,
        state=run.state,
        error=run.error,
        repo_path=run.repo.path,
        result_branch=result_branch(run.run_id) if run.repo.path and delivered else "",
        test_command=run.test_command,
        created_at=run.created_at,
        finished_at=_finished_at(run, mine),
        usage=run.usage,
        usage_by_role=_usage_by_role(mine),
        run_states=tuple(_unique(e for e in mine if isinstance(e, RunStateChanged))),
        tasks=tuple(_task_report(task, depths[task.spec.id], transitions, gates) for task in tasks),
        edges=tuple(
            (dep, task.spec.id) for task in tasks for dep in task.spec.deps if dep in run.tasks
        ),
        run_gates=tuple(gates.get("", ())),
    )


def dependency_depths(tasks: Mapping[str, Task]) -> dict[str, int]:
    """Longest chain of dependencies below each task. Dependencies on unknown tasks are
    ignored, and a cycle (never in a validated plan) cannot make it loop: depth is capped."""
    depths = dict.fromkeys(tasks, 0)
    for _ in range(len(tasks)):
        changed = False
        for task_id, task in tasks.items():
            deepest = max((depths[dep] + 1 for dep in task.spec.deps if dep in depths), default=0)
            if deepest > depths[task_id] and deepest < len(tasks):
                depths[task_id] = deepest
                changed = True
        if not changed:
            break
    return depths


def _task_report(
    task: Task,
    depth: int,
    transitions: Mapping[str, list[Transition]],
    gates: Mapping[str, list[GateEntry]],
) -> TaskReport:
    output = task.test_output
    if len(output) > TEST_OUTPUT_CHARS:
        output = "[...]\n" + output[-TEST_OUTPUT_CHARS:]
    return TaskReport(
        task_id=task.spec.id,
        title=task.spec.title,
        description=task.spec.description,
        deps=tuple(task.spec.deps),
        state=task.state,
        attempts=task.attempt,
        depth=depth,
        error=task.error,
        started_at=task.started_at,
        finished_at=task.finished_at,
        feedback=tuple(sorted(task.feedback, key=lambda feedback: feedback.attempt)),
        test_output=output,
        transitions=tuple(transitions.get(task.spec.id, ())),
        gates=tuple(gates.get(task.spec.id, ())),
    )


def _transitions(events: Sequence[RunEvent]) -> dict[str, list[Transition]]:
    seen: set[tuple[str, int, TaskState, TaskState | None]] = set()
    by_task: dict[str, list[Transition]] = {}
    for event in events:
        if not isinstance(event, TaskStatesChanged):
            continue
        for change in event.changes:
            key = (change.task_id, change.attempt, change.state, change.previous)
            if key in seen:  # reported again after a failover
                continue
            seen.add(key)
            moved = Transition(
                change.attempt, change.state, change.previous, change.reason, event.sent_at
            )
            by_task.setdefault(change.task_id, []).append(moved)
    return by_task


def _gates(events: Sequence[RunEvent]) -> dict[str, list[GateEntry]]:
    by_task: dict[str, list[GateEntry]] = {}
    for event in _unique(e for e in events if isinstance(e, GateAudit)):
        detail = event.check.detail.strip()
        if len(detail) > GATE_DETAIL_CHARS:
            detail = detail[:GATE_DETAIL_CHARS] + "\n[...]"
        by_task.setdefault(event.task_id, []).append(
            GateEntry(
                attempt=event.attempt,
                role=event.check.role,
                action=event.check.action,
                detail=detail,
                decision=event.decision.decision,
                rule=event.decision.rule,
                reason=event.decision.reason,
                at=event.sent_at,
            )
        )
    return by_task


def _usage_by_role(events: Sequence[RunEvent]) -> tuple[RoleUsage, ...]:
    totals: dict[str, Usage] = {}
    models: dict[str, set[str]] = {}
    for event in _unique(e for e in events if isinstance(e, UsageReported)):
        totals[event.role] = totals.get(event.role, Usage()) + event.usage
        # Usage of results that named no model (older workers, work that failed before an
        # answer) still counts; it just adds no name.
        named = models.setdefault(event.role, set())
        if event.model:
            named.add(event.model)
    return tuple(
        RoleUsage(role=role, usage=usage, models=tuple(sorted(models[role])))
        for role, usage in sorted(totals.items())
    )


def _finished_at(run: Run, events: Sequence[RunEvent]) -> datetime | None:
    if run.state not in TERMINAL_RUN_STATES:
        return None
    ends = [
        event.sent_at
        for event in events
        if isinstance(event, RunStateChanged) and event.state == run.state
    ]
    return ends[-1] if ends else run.updated_at


def _unique(events: Iterable[E]) -> list[E]:
    """Events in order, each message once (a re-sent event keeps its msg_id)."""
    seen: set[str] = set()
    kept: list[E] = []
    for event in events:
        if event.msg_id not in seen:
            seen.add(event.msg_id)
            kept.append(event)
    return kept


def _between(start: datetime | None, end: datetime | None) -> timedelta | None:
    return end - start if start is not None and end is not None else None
