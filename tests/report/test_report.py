"""The report of a run: what it says, in Markdown and in HTML, from a run built by hand."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import msgspec

from codeyard.report import build_report, render_html, render_markdown
from codeyard.report.graph_svg import MAX_DRAWN_TASKS, layout, render_graph_svg
from codeyard.report.markdown import code_span
from codeyard.report.model import RoleUsage, dependency_depths
from codeyard.schemas import (
    Run,
    RunEvent,
    RunState,
    Task,
    TaskSpec,
    TaskState,
    Usage,
    UsageReported,
)
from tests.report.sample_run import HOSTILE, INVISIBLE, sample_events, sample_run, trojan_run


def test_the_report_model_orders_dedups_and_totals() -> None:
    report = build_report(sample_run(), sample_events())

    assert [task.task_id for task in report.tasks] == ["a", "b", "c", "d"]
    assert [[task.task_id for task in layer] for layer in report.layers] == [
        ["a"],
        ["b", "c"],
        ["d"],
    ]
    assert report.edges == (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"))
    assert report.result_branch == "codeyard/r7"
    failed = msgspec.structs.replace(sample_run(), state=RunState.FAILED)
    assert build_report(failed, sample_events()).result_branch == ""  # it delivered none
    assert report.duration is not None
    assert report.duration.total_seconds() == 95
    b = report.tasks[1]
    assert [(move.attempt, str(move.state)) for move in b.transitions] == [
        (1, "coding"),  # once, though it was reported three times
        (1, "testing"),
        (2, "coding"),
        (2, "reviewing"),
        (3, "coding"),
        (3, "merged"),
    ]
    assert b.test_output.startswith("[...]")
    assert b.test_output.endswith("5 passed at the end")
    assert [(gate.decision, gate.rule) for gate in report.tasks[3].gates] == [
        ("needs_approval", "commands.ask"),
        ("allow", "approval.x1"),
    ]
    assert report.usage_by_role == (
        RoleUsage(role="coder", usage=Usage(calls=5, prompt_tokens=8100), models=()),
        RoleUsage(role="review", usage=Usage(calls=2, completion_tokens=300), models=()),
    )
    assert [str(change.state) for change in report.run_states] == [
        "planning",
        "executing",
        "integrating",
        "done",
    ]


def with_models() -> list[RunEvent]:
    """The sample's events with usage whose results named their models, as workers now do."""

    def spent(role: str, usage: Usage, model: str) -> UsageReported:
        return UsageReported(run_id="r7", role=role, usage=usage, model=model)

    return [e for e in sample_events() if not isinstance(e, UsageReported)] + [
        spent("coder", Usage(calls=4, prompt_tokens=8000), "gpt-4o-mini"),
        spent("review", Usage(calls=2, completion_tokens=300), "<b>local</b>"),
        spent("coder", Usage(calls=1, prompt_tokens=100), "gpt-4o-2024-08-06"),
        spent("coder", Usage(calls=1, prompt_tokens=10), "gpt-4o-mini"),
        spent("coder", Usage(calls=1, prompt_tokens=1), ""),  # an older worker's: no name
        spent("tester", Usage(calls=1, completion_tokens=7), ""),
    ]


def test_usage_by_role_names_the_models_that_answered() -> None:
    report = build_report(sample_run(), with_models())

    assert report.usage_by_role == (
        RoleUsage(
            role="coder",
            usage=Usage(calls=7, prompt_tokens=8111),
            models=("gpt-4o-2024-08-06", "gpt-4o-mini"),
        ),
        RoleUsage(
            role="review", usage=Usage(calls=2, completion_tokens=300), models=("<b>local</b>",)
        ),
        RoleUsage(role="tester", usage=Usage(calls=1, completion_tokens=7), models=()),
    )
    markdown = render_markdown(report)
    assert "| role | model | calls | prompt tokens | completion tokens | cost |" in markdown
    assert "| coder | gpt-4o-2024-08-06, gpt-4o-mini | 7 | 8,111 | 0 | $0.0000 |" in markdown
    assert "| review | \\<b\\>local\\</b\\> | 2 | 0 | 300 | $0.0000 |" in markdown
    assert "| tester | - | 1 | 0 | 7 | $0.0000 |" in markdown
    assert "| **run total** |  | 9 | 12,000 | 3,456 | $0.0421 |" in markdown
    html = render_html(report)
    parse(html)
    assert "<th>role</th><th>model</th><th>calls</th>" in html
    assert "<td>coder</td><td>gpt-4o-2024-08-06, gpt-4o-mini</td><td>7</td>" in html
    assert "<td>review</td><td>&lt;b&gt;local&lt;/b&gt;</td>" in html
    assert "<td>tester</td><td>-</td>" in html


def test_usage_naming_no_model_reads_as_before() -> None:
    report = build_report(sample_run(), sample_events())
    markdown = render_markdown(report)
    assert "| role | calls | prompt tokens | completion tokens | cost |" in markdown
    assert "| **run total** | 9 | 12,000 | 3,456 | $0.0421 |" in markdown
    assert "<th>role</th><th>calls</th>" in render_html(report)


def test_rendering_is_deterministic() -> None:
    first = build_report(sample_run(), sample_events())
    second = build_report(sample_run(), sample_events())
    assert render_markdown(first) == render_markdown(second)
    assert render_html(first) == render_html(second)


def test_markdown_has_the_plan_the_tasks_and_their_feedback() -> None:
    markdown = render_markdown(build_report(sample_run(), sample_events()))

    for task_id, title in (("a", "models"), ("b", "api"), ("c", "cli")):
        assert f"### {task_id}: {title}" in markdown
    assert "### d: docs \\& \\<readme\\>" in markdown
    mermaid = markdown.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert mermaid.startswith("graph TD\n")
    assert '  t1["a: models"]' in mermaid
    assert '  t4["d: docs & #lt;readme#gt;"]' in mermaid
    for edge in ("t1 --> t2", "t1 --> t3", "t2 --> t4", "t3 --> t4"):
        assert f"  {edge}\n" in mermaid
    assert "FAILED tests/test_api.py::test_health - assert 404 == 200" in markdown
    assert "**attempt 1: test_failure**" in markdown
    assert "**attempt 2: review**" in markdown
    assert "attempt 1: coding → testing" in markdown
    assert "| needs\\_approval |" not in markdown  # decisions are bold cells
    assert "**deny**" in markdown
    assert "secrets" in markdown
    assert "**needs\\_approval**" in markdown
    assert "approval.x1" in markdown
    assert "5 passed at the end" in markdown
    assert "| coder | 5 | 8,100 | 0 | $0.0000 |" in markdown
    assert "15,456 (prompt 12,000, completion 3,456) in 9 calls" in markdown
    assert "| result branch | `codeyard/r7` |" in markdown
    assert "| duration | 1m 35s |" in markdown


def test_markdown_never_lets_run_text_open_html() -> None:
    markdown = render_markdown(build_report(sample_run(), sample_events()))
    outside_fences = re.sub(r"(`{3,})[^\n]*\n.*?\n\1\n", "", markdown, flags=re.DOTALL)
    assert "add a health endpoint" in outside_fences
    assert "<script>" not in outside_fences
    assert HOSTILE in markdown  # verbatim inside a fence: the review comment


def test_a_fence_in_untrusted_text_cannot_close_its_block() -> None:
    run = sample_run()
    run.tasks["a"].test_output = "before\n```\n# not a heading\n````\nafter"
    markdown = render_markdown(build_report(run, []))
    assert "`````text\nbefore\n```\n# not a heading\n````\nafter\n`````" in markdown


class Structure(HTMLParser):
    """Collects the tags of a document and checks that they nest."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Structure:
    parser = Structure()
    parser.feed(html)
    parser.close()
    assert parser.errors == []
    assert parser.open == []
    return parser


def test_html_is_well_formed_self_contained_and_escaped() -> None:
    html = render_html(build_report(sample_run(), sample_events()))
    parsed = parse(html)
    names = [tag for tag, _ in parsed.tags]

    assert html.startswith("<!DOCTYPE html>")
    assert "form-action 'none'; base-uri 'none'" in html  # default-src covers neither
    assert names.count("script") == 0  # the hostile goal and comment stayed text
    assert HOSTILE in "".join(parsed.text)
    assert "&lt;script&gt;" in html
    assert not any(
        value and value.startswith(("http:", "https:", "//"))
        for tag, attrs in parsed.tags
        if tag != "svg"
        for name, value in attrs.items()
        if name in ("src", "href")
    )
    assert "link" not in names
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    assert {"summary", "plan", "tasks", "usage", "task-a", "task-d"} <= ids
    text = " ".join(parsed.text)
    assert "FAILED tests/test_api.py::test_health" in text
    assert "a secret in diff" in text
    assert "codeyard/r7" in text


def test_html_plan_has_one_node_per_task_and_an_arrow_per_dependency() -> None:
    report = build_report(sample_run(), sample_events())
    parsed = parse(render_html(report))

    nodes = [attrs for tag, attrs in parsed.tags if tag == "g" and attrs.get("class") == "node"]
    assert sorted(str(node["data-task"]) for node in nodes) == ["a", "b", "c", "d"]
    assert {node["data-state"] for node in nodes} == {"merged"}
    edges = [attrs for tag, attrs in parsed.tags if tag == "path" and attrs.get("class") == "edge"]
    assert len(edges) == 4
    assert len([tag for tag, _ in parsed.tags if tag == "svg"]) == 1

    boxes = layout(report)
    assert boxes["a"].y < boxes["b"].y == boxes["c"].y < boxes["d"].y  # one row per depth
    assert boxes["b"].x != boxes["c"].x


def test_a_dry_run_in_progress_and_a_broken_graph_still_render() -> None:
    tasks = {
        "x": Task(spec=TaskSpec(id="x", title="x", deps=["y", "ghost"]), state=TaskState.CODING),
        "y": Task(spec=TaskSpec(id="y", title="y", deps=["x"])),
    }
    run = Run(run_id="dry", goal="", tasks=tasks)
    assert max(dependency_depths(run.tasks).values()) < 2  # a cycle cannot loop forever
    report = build_report(run, [])
    assert report.finished_at is None
    assert report.result_branch == ""
    assert "none (dry run)" in render_markdown(report)
    parse(render_html(report))
    parse(render_html(build_report(Run(run_id="empty", goal="g"), [])))


def test_a_plan_too_big_to_draw_is_listed_not_drawn() -> None:
    def chain(length: int) -> Run:
        specs = [
            TaskSpec(id=f"t{n}", title="step", deps=[f"t{n - 1}"] if n else [])
            for n in range(length)
        ]
        return Run(run_id="big", goal="g", tasks={spec.id: Task(spec=spec) for spec in specs})

    drawn = render_graph_svg(build_report(chain(MAX_DRAWN_TASKS), []))
    assert drawn.count('<g class="node"') == MAX_DRAWN_TASKS
    big = build_report(chain(10_000), [])
    assert render_graph_svg(big).startswith('<p class="no-graph">10,000 tasks: too many to draw')
    html = render_html(big)
    assert "<svg" not in html
    assert 'href="#task-t9999"' in html  # every task is in the table below


def test_code_spans_hold_backticks_and_pipes() -> None:
    assert code_span("/home/me/my_repo") == "`/home/me/my_repo`"
    assert code_span("a`b|c") == "``a`b\\|c``"
    assert code_span("`x`") == "`` `x` ``"


def test_the_summary_names_the_runs_test_command_or_says_it_was_detected() -> None:
    chosen = msgspec.structs.replace(sample_run(), test_command="make test | tee log")
    markdown = render_markdown(build_report(chosen, sample_events()))
    html = render_html(build_report(chosen, sample_events()))
    detected = render_markdown(build_report(sample_run(), sample_events()))

    assert "| test command | `make test \\| tee log` |" in markdown  # a pipe ends no cell
    assert "<tr><th>test command</th><td><code>make test | tee log</code></td></tr>" in html
    assert "| test command | detected |" in detected


def test_a_title_cannot_write_markup_into_the_graph_or_math_into_the_page() -> None:
    """mermaid decodes its entity codes into the label's HTML (`#lt;` is `<`), and GitHub shows
    `$...$` as math: a title's own are shown as written."""
    run = sample_run()
    run.tasks["a"].spec = TaskSpec(id="a", title="#lt;img src=x#gt; costs $x$")
    markdown = render_markdown(build_report(run, sample_events()))
    mermaid = markdown.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert '  t1["a: #35;lt;img src=x#35;gt; costs $x$"]' in mermaid
    assert "### a: \\#lt;img src=x\\#gt; costs \\$x\\$" in markdown


def test_what_a_reader_would_not_see_is_shown_as_its_escape() -> None:
    run = trojan_run()
    html = render_html(build_report(run, []))
    parse(html)
    assert not any(character in html for character in INVISIBLE)
    assert html.count("\\u202e} \\u2066# admin\\u2069 {\\x1b[8m hidden") >= 3
