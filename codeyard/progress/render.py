"""Rich renderables for the CLI: the live view of a run, and the tables of `codeyard status` and
`codeyard workers`. Pure functions of their data and `now`, so they are tested by rendering."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from codeyard.progress.view import RunView, TaskRow
from codeyard.schemas import PendingApproval, Run, RunState, TaskState, Usage, WorkerPresence
from codeyard.terminal_text import quoted_detail, terminal_safe

TASK_STYLES: dict[TaskState, str] = {
    TaskState.PLANNED: "dim",
    TaskState.READY: "white",
    TaskState.CODING: "cyan",
    TaskState.TESTING: "blue",
    TaskState.REVIEWING: "magenta",
    TaskState.GATED: "yellow",
    TaskState.AWAITING_APPROVAL: "bold yellow",
    TaskState.MERGED: "green",
    TaskState.FAILED: "bold red",
    TaskState.CANCELLED: "red",
}
RUN_STYLES: dict[RunState, str] = {
    RunState.PLANNING: "cyan",
    RunState.PLAN_APPROVAL: "bold yellow",
    RunState.EXECUTING: "cyan",
    RunState.AWAITING_APPROVAL: "bold yellow",
    RunState.INTEGRATING: "blue",
    RunState.DONE: "bold green",
    RunState.FAILED: "bold red",
    RunState.CANCELLED: "red",
}


def duration(seconds: float | None) -> str:
    """`-`, `42s`, `3m05s`, `1h02m`."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def usage_text(usage: Usage) -> str:
    calls = f"{usage.calls:,} call{'' if usage.calls == 1 else 's'}"
    return f"{usage.total_tokens:,} tokens, ${usage.cost_usd:.4f} ({calls})"


# Levels of the tree drawn nested, at most: each indents further, and a chain of thousands of
# tasks would be wider than any terminal (and seconds to draw). Deeper tasks go on at that
# level, each saying what it comes after.
MAX_TREE_DEPTH = 12


def _task_label(row: TaskRow, under_parent: bool = True) -> Text:
    label = Text()
    label.append(row.task_id, style="bold")
    if row.title:
        label.append(f" {terminal_safe(row.title)}")
    label.append("  ")
    label.append(str(row.state), style=TASK_STYLES.get(row.state, ""))
    if row.attempt:
        label.append(f"  attempt {row.attempt}", style="dim")
    if row.seconds is not None:
        label.append(f"  {duration(row.seconds)}", style="dim")
    if under_parent and row.after:
        label.append(f"  (also after {', '.join(row.after)})", style="dim")
    elif not under_parent:  # drawn beside its parent (see MAX_TREE_DEPTH)
        label.append(f"  (after {', '.join((row.parent or '', *row.after))})", style="dim")
    return label


def task_tree(view: RunView, now: datetime) -> Tree:
    """The task graph: each task under its deepest dependency."""
    title = Text()
    title.append(f"run {view.run_id}", style="bold")
    title.append("  ")
    title.append(str(view.state), style=RUN_STYLES.get(view.state, ""))
    if view.goal:
        title.append(f"  {terminal_safe(view.goal.splitlines()[0][:80])}")
    tree = Tree(title)
    # each task's node, the node it hangs from, and its level (the run's title is 0)
    nodes: dict[str, tuple[Tree, Tree, int]] = {}
    for row in view.rows(now):
        parent, above, level = nodes.get(row.parent or "", (tree, tree, 0))
        nested = level < MAX_TREE_DEPTH
        under, depth = (parent, level + 1) if nested else (above, level)
        nodes[row.task_id] = (under.add(_task_label(row, nested)), under, depth)
    if not nodes:  # (a proposed plan's tasks are the run's once approved)
        tree.add(Text(_NO_TASKS.get(view.state, "no tasks"), "dim"))
    return tree


_NO_TASKS = {
    RunState.PLANNING: "planning...",
    RunState.PLAN_APPROVAL: "a plan waits for approval: its tasks show here once approved",
}


def render_run(view: RunView, now: datetime, notice: str = "") -> RenderableType:
    """The live view: the tree, a bar of merged tasks, usage, and what waits (if anything)."""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(1, view.total), completed=view.merged, width=40),
        Text(f"{view.merged}/{view.total} merged"),
        Text(usage_text(view.usage), style="dim"),
    )
    parts: list[RenderableType] = [task_tree(view, now), bar]
    if notice:
        parts.append(Text(notice, style="bold yellow"))
    return Group(*parts)


# Terminal columns from which `codeyard status` shows each run's usage and last update.
WIDE = 110


def id_column(header: str) -> Column:
    """A column of ids, kept whole however narrow the terminal: they are copied into commands."""
    return Column(header, no_wrap=True, min_width=len(header))


def task_table(run: Run, now: datetime) -> Table:
    """`codeyard status RUN`: one row per task."""
    table = Table(id_column("task"), "title", "state", "attempt", "duration", "feedback", "deps")
    for task_id, task in run.tasks.items():
        seconds = None
        if task.started_at is not None:
            seconds = ((task.finished_at or now) - task.started_at).total_seconds()
        table.add_row(
            task_id,
            Text(terminal_safe(task.spec.title)),  # not markup: a title may hold brackets
            Text(str(task.state), style=TASK_STYLES.get(task.state, "")),
            str(task.attempt),
            duration(seconds),
            str(len(task.feedback)),
            ", ".join(task.spec.deps) or "-",
        )
    return table


def run_summary(run: Run) -> Text:
    """The lines above the task table."""
    text = Text()
    text.append(f"run {run.run_id}  ", style="bold")
    text.append(str(run.state), style=RUN_STYLES.get(run.state, ""))
    text.append(f"\ngoal: {terminal_safe(run.goal.splitlines()[0][:120] if run.goal else '')}")
    text.append(f"\nusage: {usage_text(run.usage)}")
    if run.test_command:  # else detected, as it always was: no line for it
        text.append(f"\ntest command: {terminal_safe(run.test_command)}")
    if run.error:
        text.append(f"\nreason: {terminal_safe(run.error, lines=True)}")
    return text


def runs_table(runs: Sequence[Run], width: int = 200) -> Table:
    """`codeyard status`: one row per run, newest first, on one line each in `width` columns.
    Under `WIDE` columns without the usage and the last update (`--json` has them): at 80 the
    goal wrapped a word a line and the times were cut to `2026-11…`. The goal gives way to the
    rest, cut with an ellipsis."""
    wide = width >= WIDE
    today = datetime.now().astimezone().date()
    ordered = sorted(runs, key=lambda run: run.created_at, reverse=True)
    # each run's cells but its goal, whose column gets the width they leave
    rows: list[list[str]] = []
    for run in ordered:
        created = run.created_at.astimezone()
        row = [run.run_id, str(run.state)]
        if wide:
            row += [f"{run.usage.total_tokens:,}", f"${run.usage.cost_usd:.4f}"]
        row.append(created.strftime("%H:%M" if created.date() == today else "%Y-%m-%d"))
        if wide:
            row.append(run.updated_at.astimezone().strftime("%H:%M:%S"))
        rows.append(row)
    headers = ["run", "state", *(["tokens", "cost"] if wide else []), "created"]
    headers += ["updated"] if wide else []
    taken = sum(max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True))
    room = max(8, width - taken - 3 * (len(headers) + 1) - 1)  # (borders and padding)
    goal = Column("goal", no_wrap=True, overflow="ellipsis", max_width=room)
    table = Table(id_column("run"), "state", goal, *headers[2:])
    for run, (run_id, state, *rest) in zip(ordered, rows, strict=True):
        said = Text(terminal_safe(run.goal.splitlines()[0][:60] if run.goal else ""))
        table.add_row(run_id, Text(state, style=RUN_STYLES.get(run.state, "")), said, *rest)
    return table


def workers_table(workers: Sequence[WorkerPresence], now: datetime) -> Table:
    """`codeyard workers`: one row per worker, grouped by role."""
    table = Table("role", "worker", "state", "in flight", "host", "pid", "up", "seen")
    for worker in workers:
        table.add_row(
            Text(terminal_safe(worker.role)),  # (any publisher of presence names it)
            worker.worker_id,
            Text("busy", style="cyan") if worker.busy else Text("idle", style="green"),
            f"{worker.in_flight}/{worker.concurrency}",
            Text(terminal_safe(worker.host)),
            str(worker.pid),
            duration((now - worker.started_at).total_seconds()),
            f"{duration(max(0.0, (now - worker.sent_at).total_seconds()))} ago",
        )
    return table


def approvals_table(approvals: Sequence[PendingApproval]) -> Table:
    """`codeyard approvals`: what waits for a person. A detail is shown with its escapes and
    with how much of it is left out: the person approves all of it."""
    table = Table("run", "task", "action", "detail", "why", id_column("id"))
    for approval in approvals:
        table.add_row(
            approval.run_id,
            approval.task_id or "-",
            approval.action,
            Text(quoted_detail(approval.detail, 160)),
            Text(terminal_safe(approval.reason[:160])),
            approval.approval_id,
        )
    return table
