"""The `codeyard status` tables on a narrow terminal: ids stay whole, to be copied; and the
lines above a run's tasks."""

from __future__ import annotations

from rich.console import Console

from codeyard.progress.render import run_summary, runs_table, task_table
from codeyard.schemas import Run, TaskSpec
from codeyard.schemas.envelope import utc_now
from codeyard.schemas.model import Task

RUN_ID = "0d6b891e2c4f4a7e9b1d3f5a7c9e1b3d"  # 32 characters, as `new_id()` makes them


def rendered(table: object, width: int = 80) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(table)
    return console.export_text()


def test_run_ids_are_never_cut_at_80_columns() -> None:
    goal = "add a health endpoint that returns the version and the uptime " * 3
    runs = [Run(run_id=RUN_ID, goal=goal), Run(run_id="r2", goal=goal)]

    screen = rendered(runs_table(runs))

    assert RUN_ID in screen
    assert "…" in screen  # the goal gave way instead
    assert max(len(line) for line in screen.splitlines()) <= 80


def test_task_ids_are_never_cut_at_80_columns() -> None:
    task_id = "a-rather-long-task-id-of-forty-chars-xx"
    spec = TaskSpec(id=task_id, title="a long title that wraps on a narrow terminal " * 2)
    run = Run(run_id=RUN_ID, goal="g", tasks={task_id: Task(spec=spec)})

    screen = rendered(task_table(run, utc_now()))

    assert task_id in screen


def test_a_runs_own_test_command_is_shown_above_its_tasks() -> None:
    chosen = rendered(run_summary(Run(run_id="r1", goal="g", test_command="go test ./...")))
    detected = rendered(run_summary(Run(run_id="r1", goal="g")))

    assert "test command: go test ./...\n" in chosen
    assert "test command" not in detected  # detected in the repository, as always
