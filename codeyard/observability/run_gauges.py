"""Tasks and runs by state over the open runs of the leading coordinator, as gauges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from codeyard.observability.metrics import COORDINATOR_RUNS, COORDINATOR_TASKS
from codeyard.schemas.model import Run, RunState, TaskState


def set_state_gauges(runs: Iterable[Run]) -> None:
    """Every state gets a value (0 included), so a drained state reads 0, not its last count."""
    tasks: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for run in runs:
        states[run.state] += 1
        tasks.update(task.state for task in run.tasks.values())
    for task_state in TaskState:
        COORDINATOR_TASKS.labels(task_state.value).set(tasks[task_state])
    for run_state in RunState:
        COORDINATOR_RUNS.labels(run_state.value).set(states[run_state])
