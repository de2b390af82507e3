"""The live view's model and rendering, without a bus: a run record and events in, rows out."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from codeyard.coordinator.graph import TaskGraph
from codeyard.follow import log_lines
from codeyard.progress.approvals import waits_for_a_person
from codeyard.progress.render import (
    duration,
    render_run,
    task_table,
    task_tree,
    workers_table,
)
from codeyard.progress.view import RunView
from codeyard.schemas import (
    ActionCheck,
    GateAudit,
    GateDecision,
    Progress,
    Run,
    RunState,
    RunStateChanged,
    Task,
    TaskChange,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    Usage,
    UsageReported,
    WorkerPresence,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def diamond() -> Run:
    """a <- b, a <- c, (b, c) <- d; e stands alone."""
    specs = [
        TaskSpec(id="a", title="models"),
        TaskSpec(id="b", title="api", deps=["a"]),
        TaskSpec(id="c", title="cli", deps=["a"]),
        TaskSpec(id="d", title="docs", deps=["b", "c"]),
        TaskSpec(id="e", title="ci"),
    ]
    return Run(
        run_id="r1",
        goal="build it",
        state=RunState.EXECUTING,
        tasks={spec.id: Task(spec=spec) for spec in specs},
        usage=Usage(calls=2, prompt_tokens=100, completion_tokens=20, cost_usd=0.5),
        updated_at=T0,
    )


def moved(at: datetime, *changes: tuple[str, TaskState, int]) -> TaskStatesChanged:
    return TaskStatesChanged(
        run_id="r1",
        sent_at=at,
        changes=[TaskChange(task_id=t, state=s, attempt=n) for t, s, n in changes],
    )


def test_rows_place_every_task_once_under_its_deepest_dependency() -> None:
    view = RunView("r1")
    view.update(diamond())
    rows = view.rows(T0)
    assert [row.task_id for row in rows] == ["a", "b", "d", "c", "e"]
    by_id = {row.task_id: row for row in rows}
    assert by_id["a"].parent is None
    assert by_id["e"].parent is None
    assert by_id["b"].parent == "a"
    assert by_id["c"].parent == "a"
    assert by_id["d"].parent == "b"
    assert by_id["d"].after == ("c",)
    assert [by_id[t].depth for t in "abcde"] == [0, 1, 1, 2, 0]
    assert view.total == 5
    assert view.merged == 0


def test_a_chain_of_5000_tasks_is_drawn_as_a_chain() -> None:
    """The coordinator takes chains of any depth; the view recursed once per level, so a chain
    of 1,000 or so raised RecursionError, which killed the live view of `codeyard run`."""
    chain = [TaskSpec(id=f"t{i}", title="x", deps=[f"t{i - 1}"] if i else []) for i in range(5000)]
    TaskGraph(chain)  # accepted
    view = RunView("r1")
    # listed last first: the depth of the first task listed is the whole chain's
    view.update(Run(run_id="r1", goal="g", tasks={s.id: Task(spec=s) for s in reversed(chain)}))

    rows = view.rows(T0)

    assert [row.task_id for row in rows] == [spec.id for spec in chain]  # parents first
    assert [row.depth for row in rows] == list(range(5000))
    assert [row.parent for row in rows] == [None, *(spec.id for spec in chain[:-1])]


def test_a_long_chain_is_drawn_nested_only_so_deep() -> None:
    """Each level indents further: a chain of thousands was drawn thousands of columns wide."""
    chain = [TaskSpec(id=f"t{i}", title="x", deps=[f"t{i - 1}"] if i else []) for i in range(300)]
    view = RunView("r1")
    view.update(Run(run_id="r1", goal="g", tasks={s.id: Task(spec=s) for s in chain}))
    console = Console(record=True, file=io.StringIO(), width=100)

    console.print(task_tree(view, T0))

    lines = console.export_text().splitlines()[1:]  # (the first is the run's)
    assert [line.split("── ")[1].split()[0] for line in lines] == [spec.id for spec in chain]
    assert max(len(line) for line in lines) < 100  # none wrapped
    assert lines[-1].endswith("(after t298)")


def test_events_move_tasks_and_time_them() -> None:
    view = RunView("r1")
    view.update(diamond())
    view.apply(moved(T0 + timedelta(seconds=1), ("a", TaskState.CODING, 1)))
    view.apply(moved(T0 + timedelta(seconds=5), ("a", TaskState.CODING, 2)))
    running = {row.task_id: row for row in view.rows(T0 + timedelta(seconds=31))}
    assert running["a"].state is TaskState.CODING
    assert running["a"].attempt == 2
    assert running["a"].seconds == 30.0
    assert running["b"].seconds is None

    view.apply(moved(T0 + timedelta(seconds=61), ("a", TaskState.MERGED, 2)))
    done = {row.task_id: row for row in view.rows(T0 + timedelta(hours=1))}
    assert done["a"].seconds == 60.0  # stops counting once merged
    assert view.merged == 1


def test_a_status_older_than_the_events_does_not_undo_them() -> None:
    view = RunView("r1")
    view.apply(moved(T0 + timedelta(seconds=2), ("a", TaskState.TESTING, 1)))
    view.update(diamond())  # read at T0: a still planned there
    assert view.rows(T0)[0].state is TaskState.TESTING
    assert view.rows(T0)[0].title == "models"  # but titles come from the record


def test_usage_is_the_records_plus_what_was_reported_since() -> None:
    view = RunView("r1")
    view.update(diamond())
    view.apply(UsageReported(run_id="r1", role="coder", usage=Usage(calls=1, prompt_tokens=30)))
    assert view.usage.total_tokens == 150
    assert view.usage.calls == 3
    view.update(diamond())  # the next record counts it (here it does not: the sample is fixed)
    assert view.usage.total_tokens == 120


def test_run_state_and_waiting() -> None:
    view = RunView("r1")
    view.apply(RunStateChanged(run_id="r1", state=RunState.PLAN_APPROVAL))
    assert view.waiting_for_a_person
    assert not view.finished
    view.apply(RunStateChanged(run_id="r1", state=RunState.CANCELLED, reason="by user"))
    assert view.finished
    assert view.reason == "by user"


def test_a_plan_waiting_for_approval_is_not_drawn_as_a_run_of_no_tasks() -> None:
    view = RunView("r1")
    view.apply(RunStateChanged(run_id="r1", state=RunState.PLAN_APPROVAL))
    console = Console(record=True, file=io.StringIO(), width=120)
    console.print(render_run(view, T0))
    text = console.export_text()
    assert "a plan waits for approval" in text
    assert "no tasks" not in text


def test_render_draws_the_tree_with_every_task_and_the_totals() -> None:
    view = RunView("r1")
    view.update(diamond())
    view.apply(moved(T0, ("a", TaskState.MERGED, 1), ("b", TaskState.CODING, 2)))
    console = Console(record=True, file=io.StringIO(), force_terminal=True, width=120)
    console.print(render_run(view, T0 + timedelta(seconds=75), notice="waits for a person"))
    text = console.export_text()
    for task_id, title in (("a", "models"), ("b", "api"), ("c", "cli"), ("d", "docs"), ("e", "ci")):
        assert f"{task_id} {title}" in text
    assert "run r1" in text
    assert "executing" in text
    assert "b api  coding  attempt 2  1m15s" in text
    assert "(also after c)" in text
    assert "1/5 merged" in text
    assert "120 tokens, $0.5000" in text
    assert "waits for a person" in text
    assert "└──" in text or "├──" in text  # a tree, not a list


def test_tables_render() -> None:
    console = Console(record=True, file=io.StringIO(), width=160)
    run = diamond()
    run.tasks["a"].state = TaskState.MERGED
    run.tasks["a"].started_at = T0
    run.tasks["a"].finished_at = T0 + timedelta(seconds=42)
    console.print(task_table(run, T0))
    presence = WorkerPresence(
        worker_id="w1",
        role="coder",
        pid=7,
        host="h",
        concurrency=2,
        in_flight=1,
        started_at=T0,
        sent_at=T0,
    )
    console.print(workers_table([presence], T0 + timedelta(seconds=3)))
    text = console.export_text()
    assert "merged" in text
    assert "42s" in text
    assert "coder" in text
    assert "busy" in text
    assert "1/2" in text


def test_durations() -> None:
    assert [duration(s) for s in (None, 5, 65, 3700)] == ["-", "5s", "1m05s", "1h01m"]


def test_log_lines_cover_what_the_follower_leaves_out() -> None:
    check = ActionCheck(action="run_command", detail="pytest -q")
    audit = GateAudit(
        run_id="r1", task_id="a", check=check, decision=GateDecision(decision="allow")
    )
    progress = Progress(run_id="r1", task_id="a", role="coder", message="editing models.py")
    [gate] = log_lines(audit)
    [said] = log_lines(progress)
    assert gate.endswith("a: gate allow run_command 'pytest -q'")
    assert said.endswith("a: coder: editing models.py")
    assert log_lines(moved(T0, ("b", TaskState.CODING, 2)))[0].endswith("b: coding (attempt 2)")
    spent = Usage(calls=1, prompt_tokens=30, completion_tokens=12)
    named = UsageReported(run_id="r1", task_id="a", role="coder", usage=spent, model="gpt-4o-mini")
    unnamed = UsageReported(run_id="r1", role="planner", usage=spent)  # an older worker's
    assert log_lines(named)[0].endswith("a: coder used 42 tokens of gpt-4o-mini ($0.0000)")
    assert log_lines(unnamed)[0].endswith("planning: planner used 42 tokens ($0.0000)")


def test_what_waits_for_a_person() -> None:
    check = ActionCheck(action="install_package", detail="requests")
    asked = GateDecision(decision="needs_approval", approval_id="x1")
    assert waits_for_a_person(GateAudit(run_id="r1", check=check, decision=asked))
    assert waits_for_a_person(RunStateChanged(run_id="r1", state=RunState.AWAITING_APPROVAL))
    assert waits_for_a_person(moved(T0, ("a", TaskState.AWAITING_APPROVAL, 1)))
    assert not waits_for_a_person(moved(T0, ("a", TaskState.CODING, 1)))
