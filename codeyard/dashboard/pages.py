"""The dashboard's pages as HTML strings, from runs and approvals: pure functions, no I/O.

Everything that comes from a run (goals, titles, diffs, test output, review text) is
untrusted: it is escaped here, and the pages' Content-Security-Policy allows only the
dashboard's own script, so markup that slipped through still could not run."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from codeyard.report import build_report, text
from codeyard.report.graph_svg import STATE_COLOURS, render_graph_svg
from codeyard.schemas.messages import PendingApproval
from codeyard.schemas.model import FeedbackKind, Run, Task, TaskState
from codeyard.terminal_text import html_text, terminal_safe

LIVE_SCRIPT = "/static/live.js"
COLOURS = {str(state): colour for state, colour in STATE_COLOURS.items()}
# In each page too (a page saved to disk keeps it), without frame-ancestors, which browsers
# take only from the header (and warn about in a page).
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'"
)
CSP = f"{PAGE_CSP}; frame-ancestors 'none'"  # the header's

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 0; background: #fafafa; }
nav { background: #263238; padding: 8px 24px; } nav a { color: #fff; margin-right: 16px; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
pre { background: #f4f4f4; border: 1px solid #e2e2e2; padding: 8px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-word; max-height: 36em; }
.goal { white-space: pre-wrap; background: #fff; border-left: 4px solid #90caf9; padding: 8px; }
.graph { overflow-x: auto; background: #fff; border: 1px solid #e2e2e2; padding: 8px; }
.state { padding: 1px 6px; border-radius: 8px; border: 1px solid #999; white-space: nowrap; }
.live { color: #777; font-size: 12px; }
form.answer { display: inline; } button { cursor: pointer; }
button.approve { background: #c8e6c9; } button.deny { background: #ffcdd2; }
.empty { color: #777; }
"""


def page(title: str, body: str, *, script: str = "") -> str:
    """A whole page: `body` must already be escaped HTML; `script` the path of the dashboard's
    own script it runs, if any."""
    script = f'<script src="{script}" defer></script>\n' if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{PAGE_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_text(title)}</title>\n<style>{CSS}</style>\n{script}</head>\n<body>\n"
        '<nav><a href="/">Runs</a><a href="/approvals">Approvals</a></nav>\n'
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def run_url(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


def task_url(run_id: str, task_id: str) -> str:
    return f"{run_url(run_id)}/tasks/{quote(task_id, safe='')}"


def state_badge(state: str, *, task_id: str = "") -> str:
    colour = COLOURS.get(state, "#ffffff")
    data = f' data-task="{html_text(task_id)}"' if task_id else ""
    return (
        f'<span class="state"{data} data-state="{html_text(state)}" '
        f'style="background:{colour}">{html_text(state)}</span>'
    )


def runs_page(runs: Sequence[Run], omitted: int = 0) -> str:
    """The runs, newest first; `omitted`: how many older ended runs the list leaves out (one
    reply holds about 1,800 runs' headers)."""
    left_out = (
        f'<p class="omitted">{omitted} older ended runs are not listed; '
        "<code>codeyard status RUN</code> shows any of them.</p>"
        if omitted
        else ""
    )
    if not runs:
        return page("codeyard runs", f'<h1>Runs</h1>\n<p class="empty">no runs yet</p>{left_out}')
    rows = "".join(
        f'<tr class="run" data-run="{html_text(run.run_id)}">'
        f'<td><a href="{run_url(run.run_id)}">{html_text(run.run_id)}</a></td>'
        f"<td>{state_badge(run.state)}</td>"
        f"<td>{html_text(text.first_line(run.goal))}</td>"
        f"<td>{html_text(text.when(run.created_at))}</td>"
        f"<td>{html_text(text.when(run.updated_at))}</td></tr>"
        for run in sorted(runs, key=lambda run: run.created_at, reverse=True)
    )
    table = (
        '<table id="runs"><tr><th>run</th><th>state</th><th>goal</th><th>created</th>'
        f"<th>updated</th></tr>{rows}</table>"
    )
    return page("codeyard runs", f"<h1>Runs</h1>\n{table}{left_out}")


def run_page(run: Run) -> str:
    """The run with its task graph; the page's script recolours the graph from
    `data-events` (server-sent events) as the tasks move."""
    report = build_report(run, [])  # the graph needs the tasks only, not their history
    legend = " ".join(state_badge(state) for state in TaskState)
    rows = "".join(
        f'<tr><td><a href="{task_url(run.run_id, task.task_id)}">{html_text(task.task_id)}</a></td>'
        f"<td>{html_text(text.first_line(task.title))}</td>"
        f"<td>{html_text(', '.join(task.deps))}</td>"
        f"<td>{state_badge(task.state, task_id=task.task_id)}</td>"
        f'<td data-attempt="{html_text(task.task_id)}">{task.attempts}</td></tr>'
        for task in report.tasks
    )
    body = [
        f"<h1>Run {html_text(run.run_id)}</h1>",
        f'<p>state: <span id="run-state">{state_badge(run.state)}</span> '
        '<span class="live" id="live">connecting to live updates…</span></p>',
        f'<p class="goal">{html_text(run.goal)}</p>',
        *([f"<h2>Error</h2><pre>{html_text(run.error)}</pre>"] if run.error else []),
        "<h2>Task graph</h2>",
        f'<div class="graph" id="graph">{render_graph_svg(report)}</div>',
        f'<p class="legend">{legend}</p>',
        "<h2>Tasks</h2>",
        '<table id="tasks"><tr><th>task</th><th>title</th><th>needs</th><th>state</th>'
        f"<th>attempt</th></tr>{rows}</table>",
        f"<p>tokens: {html_text(text.tokens(run.usage))}, "
        f"cost {html_text(text.cost(run.usage))}</p>",
    ]
    events = f"{run_url(run.run_id)}/events"
    main = f'<div id="run" data-events="{html_text(events)}">\n' + "\n".join(body) + "\n</div>"
    return page(f"codeyard run {run.run_id}", main, script=LIVE_SCRIPT)


def task_page(run: Run, task: Task) -> str:
    spec = task.spec
    facts = [
        ("state", state_badge(task.state)),
        ("attempt", str(task.attempt)),
        ("needs", html_text(", ".join(spec.deps)) or "-"),
        ("started", html_text(text.when(task.started_at))),
        ("finished", html_text(text.when(task.finished_at))),
        ("tests run", str(task.tests_run)),
        (
            "reviewers",
            html_text(
                ", ".join(
                    f"{name}: {'approved' if ok else 'no'}"
                    for name, ok in sorted(task.approvals.items())
                )
            )
            or "-",
        ),
    ]
    body = [
        f'<p><a href="{run_url(run.run_id)}">← run {html_text(run.run_id)}</a></p>',
        f"<h1>Task {html_text(spec.id)}: {html_text(spec.title)}</h1>",
        "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>",
    ]
    if spec.description:
        body.append(f'<h2>Description</h2><p class="goal">{html_text(spec.description)}</p>')
    if spec.acceptance:
        items = "".join(f"<li>{html_text(item)}</li>" for item in spec.acceptance)
        body.append(f"<h2>Acceptance</h2><ul>{items}</ul>")
    if task.error:
        body.append(f'<h2>Error</h2><pre id="error">{html_text(task.error)}</pre>')
    body.append(_feedback(task, review=False))
    body.append(_feedback(task, review=True))
    if task.summary:
        body.append(f'<h2>Coder\'s summary</h2><pre id="summary">{html_text(task.summary)}</pre>')
    body.append(f"<h2>Diff (attempt {task.attempt})</h2>{_patch(task)}")
    if task.tests:  # merged with the diff
        tests = html_text(task.tests.text)
        body.append(f'<h2>Tests the tester wrote</h2><pre id="tests">{tests}</pre>')
    output = html_text(task.test_output) if task.test_output else ""
    body.append(
        f'<h2>Last test output</h2><pre id="test-output">{output}</pre>'
        if output
        else '<h2>Last test output</h2><p class="empty">none yet</p>'
    )
    return page(f"codeyard task {run.run_id}/{spec.id}", "\n".join(body))


def _feedback(task: Task, *, review: bool) -> str:
    heading = "Review feedback" if review else "Why earlier attempts went back"
    chosen = [f for f in task.feedback if (f.kind is FeedbackKind.REVIEW) == review]
    if not chosen:
        return f'<h2>{heading}</h2><p class="empty">none</p>'
    items = "".join(
        f"<li><b>attempt {f.attempt}: {html_text(f.kind)}</b><pre>{html_text(f.text)}</pre></li>"
        for f in sorted(chosen, key=lambda f: f.attempt)
    )
    section = "review" if review else "feedback"
    return f'<h2>{heading}</h2><ul id="{section}">{items}</ul>'


def _patch(task: Task) -> str:
    patch = task.patch
    if patch is None:
        return '<p class="empty">no patch yet</p>'
    if patch.text:
        return f'<pre id="diff">{html_text(patch.text)}</pre>'
    # a large patch the dashboard could not read from the object store (deleted, or no access)
    return (
        f'<p class="empty">too large to carry inline: object {html_text(patch.object_name)} '
        f"(sha256 {html_text(patch.sha256)}) in the artifacts store</p>"
    )


def approvals_page(approvals: Sequence[PendingApproval], csrf: str) -> str:
    pending = [a for a in approvals if a.status == "pending"]
    if not pending:
        return page(
            "codeyard approvals",
            '<h1>Approvals</h1>\n<p class="empty" id="none">nothing waits for approval</p>',
        )
    rows = "".join(_approval_row(approval, csrf) for approval in pending)
    table = (
        '<table id="approvals"><tr><th>run</th><th>task</th><th>action</th><th>detail</th>'
        f"<th>why</th><th>asked</th><th>answer</th></tr>{rows}</table>"
    )
    return page("codeyard approvals", f"<h1>Approvals</h1>\n{table}")


def _approval_row(approval: PendingApproval, csrf: str) -> str:
    base = f"/approvals/{quote(approval.approval_id, safe='')}"
    hidden = f'<input type="hidden" name="csrf" value="{html_text(csrf)}">'
    task = (
        f'<a href="{task_url(approval.run_id, approval.task_id)}">{html_text(approval.task_id)}</a>'
        if approval.task_id
        else "-"
    )
    return (
        f'<tr class="approval" data-approval="{html_text(approval.approval_id)}">'
        f'<td><a href="{run_url(approval.run_id)}">{html_text(approval.run_id)}</a></td>'
        f"<td>{task}</td><td>{html_text(approval.action)}</td>"
        # whole (all of it runs), with control and bidi characters shown as their escapes
        f"<td><pre>{html_text(terminal_safe(approval.detail, lines=True))}</pre></td>"
        f"<td>{html_text(terminal_safe(approval.reason))}</td>"
        f"<td>{html_text(text.when(approval.requested_at))}</td>"
        f'<td><form class="answer" method="post" action="{base}/approve">{hidden}'
        '<button class="approve" type="submit">Approve</button></form> '
        f'<form class="answer" method="post" action="{base}/deny">{hidden}'
        '<button class="deny" type="submit">Deny</button></form></td></tr>'
    )


def message_page(title: str, message: str) -> str:
    return page(title, f"<h1>{html_text(title)}</h1>\n<p>{html_text(message)}</p>")
