"""A `RunReport` as one self-contained HTML file: inline CSS, an inline SVG of the plan, no
JavaScript and nothing fetched. Every piece of text from the run is escaped, and the page's
Content-Security-Policy forbids scripts anyway, in case something slipped through."""

from __future__ import annotations

from collections import Counter

from codeyard.report import text
from codeyard.report.graph_svg import STATE_COLOURS, render_graph_svg
from codeyard.report.model import GateEntry, RunReport, TaskReport
from codeyard.schemas.model import RunState, TaskState
from codeyard.terminal_text import html_text

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
pre { background: #f4f4f4; border: 1px solid #e2e2e2; padding: 8px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-word; max-height: 30em; }
.goal { white-space: pre-wrap; background: #fff; border-left: 4px solid #90caf9; padding: 8px; }
.graph { overflow-x: auto; background: #fff; border: 1px solid #e2e2e2; padding: 8px; }
.graph svg text { font: 12px system-ui, sans-serif; }
.state { padding: 1px 6px; border-radius: 8px; border: 1px solid #999; white-space: nowrap; }
.task { background: #fff; border: 1px solid #e2e2e2; border-radius: 6px; padding: 4px 16px 12px;
        margin: 12px 0; }
.legend span { margin-right: 8px; }
.deny { color: #b71c1c; font-weight: bold; } .allow { color: #1b5e20; }
.needs_approval { color: #8d6e00; font-weight: bold; }
"""

# form-action and base-uri too: default-src does not cover them, and markup that slipped
# through could otherwise send a form to another site.
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"


def render_html(report: RunReport) -> str:
    title = f"codeyard run {report.run_id}"
    body = [
        f"<h1>{html_text(title)}</h1>",
        '<section id="summary">',
        "<h2>Goal</h2>",
        f'<p class="goal">{html_text(report.goal)}</p>',
        _summary(report),
        *([f"<h3>Error</h3>{_pre(report.error)}"] if report.error else []),
        "</section>",
        '<section id="plan">',
        "<h2>Plan</h2>",
        f'<div class="graph">{render_graph_svg(report)}</div>',
        _legend(report),
        _task_table(report),
        "</section>",
        '<section id="tasks">',
        "<h2>Tasks</h2>",
        *(_task(task) for task in report.tasks),
        "</section>",
    ]
    if report.run_gates:
        body += [
            '<section id="run-gates">',
            "<h2>Gate decisions about the run</h2>",
            _gate_table(report.run_gates),
            "</section>",
        ]
    body += ['<section id="usage">', "<h2>Tokens and cost</h2>", _usage(report), "</section>"]
    if report.run_states:
        items = "".join(
            f"<li>{html_text(text.when(change.sent_at))} <b>{html_text(change.state)}</b>"
            + (f": {html_text(text.first_line(change.reason))}" if change.reason else "")
            + "</li>"
            for change in report.run_states
        )
        body += ['<section id="timeline">', "<h2>Run timeline</h2>", f"<ul>{items}</ul>"]
        body.append("</section>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_text(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _table(headers: list[str], rows: list[list[str]], css_class: str = "") -> str:
    """A table of cells that are already HTML (escape what goes into them)."""
    attribute = f' class="{css_class}"' if css_class else ""
    head = "".join(f"<th>{header}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pre(value: str) -> str:
    return f"<pre>{html_text(value)}</pre>"


def _code(value: str) -> str:
    return f"<code>{html_text(value)}</code>" if value else "-"


# run states share the colours of the task states that end the same way
_COLOURS: dict[str, str] = {str(state): colour for state, colour in STATE_COLOURS.items()} | {
    str(RunState.DONE): STATE_COLOURS[TaskState.MERGED]
}


def _state(state: str) -> str:
    colour = _COLOURS.get(state, "#ffffff")
    return f'<span class="state" style="background:{colour}">{html_text(state)}</span>'


def _summary(report: RunReport) -> str:
    counts = Counter(task.state for task in report.tasks)
    tally = ", ".join(f"{counts[state]} {state}" for state in sorted(counts)) or "none"
    rows = [
        ("state", _state(report.state)),
        ("repository", html_text(report.repo_path) or "none (dry run)"),
        ("result branch", _code(report.result_branch)),
        ("test command", _code(report.test_command) if report.test_command else "detected"),
        ("created", html_text(text.when(report.created_at))),
        ("finished", html_text(text.when(report.finished_at))),
        ("duration", html_text(text.how_long(report.duration))),
        ("tasks", html_text(f"{len(report.tasks)}: {tally}")),
        ("tokens", html_text(text.tokens(report.usage))),
        ("cost", html_text(text.cost(report.usage))),
    ]
    body = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in rows)
    return f'<table class="summary"><tbody>{body}</tbody></table>'


def _legend(report: RunReport) -> str:
    states = sorted({task.state for task in report.tasks})
    return '<p class="legend">' + "".join(_state(state) for state in states) + "</p>"


def _task_table(report: RunReport) -> str:
    rows = [
        [
            f'<a href="#task-{html_text(task.task_id)}">{html_text(task.task_id)}</a>',
            html_text(task.title),
            html_text(", ".join(task.deps)) or "-",
            _state(task.state),
            str(task.attempts),
            html_text(text.when(task.started_at)),
            html_text(text.when(task.finished_at)),
            html_text(text.how_long(task.duration)),
        ]
        for task in report.tasks
    ]
    headers = ["task", "title", "depends on", "state", "attempts", "started", "finished", "took"]
    return _table(headers, rows, "tasks")


def _task(task: TaskReport) -> str:
    plural = "" if task.attempts == 1 else "s"
    facts = [
        f"{_state(task.state)} after {task.attempts} attempt{plural}",
        "depends on " + (html_text(", ".join(task.deps)) or "nothing"),
        f"started {html_text(text.when(task.started_at))}, finished "
        f"{html_text(text.when(task.finished_at))}, took {html_text(text.how_long(task.duration))}",
    ]
    attempts: dict[int, list[str]] = {}
    for transition in task.transitions:
        attempts.setdefault(transition.attempt, []).append(str(transition.state))
    facts += [
        f"{f'attempt {attempt}' if attempt else 'before the first attempt'}: "
        f"{html_text(' → '.join(states))}"
        for attempt, states in sorted(attempts.items())
    ]
    parts = [
        f'<article class="task" id="task-{html_text(task.task_id)}">',
        f"<h3>{html_text(task.task_id)}: {html_text(task.title)}</h3>",
        "<ul>" + "".join(f"<li>{fact}</li>" for fact in facts) + "</ul>",
    ]
    if task.description:
        parts.append(f'<p class="description">{html_text(task.description)}</p>')
    if task.error:
        parts += ["<h4>Error</h4>", _pre(task.error)]
    if task.feedback:
        parts.append("<h4>Feedback on earlier attempts</h4>")
        for feedback in task.feedback:
            parts.append(
                f'<div class="feedback"><b>attempt {feedback.attempt}: '
                f"{html_text(feedback.kind)}</b>{_pre(feedback.text)}</div>"
            )
    if task.gates:
        parts += ["<h4>Gate decisions</h4>", _gate_table(task.gates)]
    if task.test_output.strip():
        parts += ["<h4>Last test output</h4>", _pre(task.test_output)]
    parts.append("</article>")
    return "\n".join(parts)


def _gate_table(gates: tuple[GateEntry, ...]) -> str:
    rows = [
        [
            str(gate.attempt),
            html_text(gate.role) or "-",
            html_text(gate.action),
            _pre(gate.detail) if gate.detail else "-",
            f'<span class="{html_text(gate.decision)}">{html_text(gate.decision)}</span>',
            html_text(gate.rule) or "-",
            html_text(gate.reason),
        ]
        for gate in gates
    ]
    headers = ["attempt", "role", "action", "detail", "decision", "rule", "reason"]
    return _table(headers, rows, "gates")


def _usage(report: RunReport) -> str:
    # The model column only when some result named one: a run of older workers reads as before.
    named = report.models_named
    rows = [
        [
            name,
            *([models] if named else []),
            f"{usage.calls:,}",
            f"{usage.prompt_tokens:,}",
            f"{usage.completion_tokens:,}",
            html_text(text.cost(usage)),
        ]
        for name, models, usage in [
            *(
                (html_text(role.role), html_text(text.models(role.models)), role.usage)
                for role in report.usage_by_role
            ),
            ("<b>run total</b>", "", report.usage),
        ]
    ]
    model = ["model"] if named else []
    headers = ["role", *model, "calls", "prompt tokens", "completion tokens", "cost"]
    return _table(headers, rows, "usage")
