"""A `RunReport` as Markdown: tables, a mermaid graph of the plan, untrusted text fenced.

Text from the run (goal, titles, comments, test output) is untrusted: inline it is
backslash-escaped so it cannot open HTML tags, links or table cells; blocks go in code fences
longer than any run of backticks they contain.
"""

from __future__ import annotations

import re
from collections import Counter

from codeyard.report import text
from codeyard.report.graph_svg import STATE_COLOURS
from codeyard.report.model import GateEntry, RunReport, TaskReport

_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#&!$])")  # ($: GitHub's math)
_BACKTICKS = re.compile(r"`+")


def render_markdown(report: RunReport) -> str:
    lines: list[str] = [f"# codeyard run {inline(report.run_id)}", ""]
    lines += ["**Goal**", ""]
    lines += [f"> {inline(line)}" if line.strip() else ">" for line in report.goal.splitlines()]
    lines += ["", *_summary(report), ""]
    if report.error:
        lines += ["**Error**", "", *fenced(report.error), ""]
    lines += ["## Plan", "", *mermaid(report), "", *_task_table(report), ""]
    lines += ["## Tasks", ""]
    for task in report.tasks:
        lines += _task(task)
    if report.run_gates:
        lines += ["## Gate decisions about the run", "", *_gate_table(report.run_gates), ""]
    lines += ["## Tokens and cost", "", *_usage(report), ""]
    if report.run_states:
        lines += ["## Run timeline", ""]
        for change in report.run_states:
            reason = f": {inline(text.first_line(change.reason))}" if change.reason else ""
            lines.append(f"- {text.when(change.sent_at)} {change.state}{reason}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def inline(value: str) -> str:
    """Untrusted text on one line, with every Markdown/HTML character escaped."""
    return _SPECIAL.sub(r"\\\1", " ".join(value.split()))


def code_span(value: str) -> str:
    """Untrusted text on one line as literal code, for a table cell."""
    line = " ".join(value.split()).replace("|", "\\|")  # a pipe ends a cell even in code
    longest = max((len(run) for run in _BACKTICKS.findall(line)), default=0)
    ticks = "`" * (longest + 1)
    padded = f" {line} " if line.startswith("`") or line.endswith("`") else line
    return f"{ticks}{padded}{ticks}"


def fenced(value: str, language: str = "text") -> list[str]:
    longest = max((len(run) for run in _BACKTICKS.findall(value)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", *value.rstrip("\n").splitlines(), fence]


def mermaid(report: RunReport) -> list[str]:
    """A `graph TD` block. Node ids are `t1`, `t2`... (task ids such as `end` or `a--b` would
    confuse mermaid); the label carries the task id and title."""
    node = {task.task_id: f"t{index}" for index, task in enumerate(report.tasks, start=1)}
    lines = ["```mermaid", "graph TD"]
    for task in report.tasks:
        lines.append(f'  {node[task.task_id]}["{_label(task)}"]')
    for dep, task_id in report.edges:
        lines.append(f"  {node[dep]} --> {node[task_id]}")
    states = sorted({task.state for task in report.tasks})
    for state in states:
        lines.append(f"  classDef {state} fill:{STATE_COLOURS[state]},stroke:#444")
        members = ",".join(node[task.task_id] for task in report.tasks if task.state == state)
        lines.append(f"  class {members} {state}")
    lines.append("```")
    return lines


def _label(task: TaskReport) -> str:
    label = text.first_line(f"{task.task_id}: {task.title}", 60)
    # mermaid's entity codes: a quote would end the label, a backtick the fence
    # ("#" first: a title's own "#lt;" would be decoded into "<")
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("`", "#96;"), ("<", "#lt;"), (">", "#gt;")):
        label = label.replace(char, code)
    return label


def _summary(report: RunReport) -> list[str]:
    counts = Counter(task.state for task in report.tasks)
    tally = ", ".join(f"{counts[state]} {state}" for state in sorted(counts)) or "none"
    rows = [
        ("state", str(report.state)),
        ("repository", code_span(report.repo_path) if report.repo_path else "none (dry run)"),
        ("result branch", f"`{report.result_branch}`" if report.result_branch else "-"),
        ("test command", code_span(report.test_command) if report.test_command else "detected"),
        ("created", text.when(report.created_at)),
        ("finished", text.when(report.finished_at)),
        ("duration", text.how_long(report.duration)),
        ("tasks", f"{len(report.tasks)}: {tally}"),
        ("tokens", text.tokens(report.usage)),
        ("cost", text.cost(report.usage)),
    ]
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]


def _task_table(report: RunReport) -> list[str]:
    lines = [
        "| task | title | depends on | state | attempts | started | finished | duration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in report.tasks:
        deps = ", ".join(inline(dep) for dep in task.deps) or "-"
        lines.append(
            f"| {inline(task.task_id)} | {inline(text.first_line(task.title, 80))} | {deps} "
            f"| {task.state} | {task.attempts} | {text.when(task.started_at)} "
            f"| {text.when(task.finished_at)} | {text.how_long(task.duration)} |"
        )
    return lines


def _task(task: TaskReport) -> list[str]:
    plural = "" if task.attempts == 1 else "s"
    lines = [
        f"### {inline(task.task_id)}: {inline(task.title)}",
        "",
        f"- state: **{task.state}** after {task.attempts} attempt{plural}",
        f"- depends on: {', '.join(inline(dep) for dep in task.deps) or 'nothing'}",
        f"- started {text.when(task.started_at)}, finished {text.when(task.finished_at)}, "
        f"took {text.how_long(task.duration)}",
    ]
    if task.error:
        lines.append(f"- error: {inline(text.first_line(task.error, 300))}")
    for attempt, states in _attempt_paths(task):
        which = f"attempt {attempt}" if attempt else "before the first attempt"
        lines.append(f"- {which}: {' → '.join(states)}")
    lines.append("")
    if task.feedback:
        lines += ["#### Feedback on earlier attempts", ""]
        for feedback in task.feedback:
            lines += [f"**attempt {feedback.attempt}: {feedback.kind}**", ""]
            lines += [*fenced(feedback.text), ""]
    if task.gates:
        lines += ["#### Gate decisions", "", *_gate_table(task.gates), ""]
    if task.test_output.strip():
        lines += ["#### Last test output", "", *fenced(task.test_output), ""]
    return lines


def _attempt_paths(task: TaskReport) -> list[tuple[int, list[str]]]:
    """The states each attempt went through, from the task's transitions."""
    paths: dict[int, list[str]] = {}
    for transition in task.transitions:
        paths.setdefault(transition.attempt, []).append(str(transition.state))
    return sorted(paths.items())


def _gate_table(gates: tuple[GateEntry, ...]) -> list[str]:
    lines = [
        "| attempt | role | action | detail | decision | rule | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for gate in gates:
        lines.append(
            f"| {gate.attempt} | {inline(gate.role) or '-'} | {inline(gate.action)} "
            f"| {inline(text.first_line(gate.detail, 80))} | **{inline(gate.decision)}** "
            f"| {inline(gate.rule) or '-'} | {inline(text.first_line(gate.reason, 160))} |"
        )
    return lines


def _usage(report: RunReport) -> list[str]:
    # The model column only when some result named one: a run of older workers reads as before.
    named = report.models_named
    model_header = "| model " if named else ""
    lines = [
        f"| role {model_header}| calls | prompt tokens | completion tokens | cost |",
        "|---|---|---|---|---|" + ("---|" if named else ""),
    ]
    rows = [
        (inline(role.role), inline(text.models(role.models)), role.usage)
        for role in report.usage_by_role
    ]
    for name, models, usage in [*rows, ("**run total**", "", report.usage)]:
        model_cell = f"| {models} " if named else ""
        lines.append(
            f"| {name} {model_cell}| {usage.calls:,} | {usage.prompt_tokens:,} "
            f"| {usage.completion_tokens:,} | {text.cost(usage)} |"
        )
    return lines
