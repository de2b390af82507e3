"""`codeyard report` and `codeyard rollback` after a real run: `codeyard up`, scripted
workers, `codeyard run`, all real processes."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from pathlib import Path

import msgspec

from codeyard.schemas import TaskSpec
from codeyard.workspace.git import git
from tests.cli.test_run import codeyard_run, codeyard_up, repo
from tests.cli.test_up import isolated_env
from tests.processes import codeyard

__all__ = ["codeyard_up", "repo"]  # fixtures, shared with test_run


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "g" and found.get("class") == "node":
            self.nodes.append(found.get("data-task") or "")
        self.scripts += tag == "script"


async def test_report_and_rollback_of_a_finished_run(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(
        msgspec.json.encode(
            [
                TaskSpec(id="a", title="models"),
                TaskSpec(id="b", title="api", deps=["a"]),
                TaskSpec(id="c", title="docs", deps=["b"]),
            ]
        )
    )
    goal = "add an api <script>alert(1)</script>"
    args = (goal, "--repo", str(repo), "--plan", str(plan), "--run-id", "r9")
    finished = await asyncio.to_thread(codeyard_run, codeyard_up, *args)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    (repo / "README.md").write_text("the user's own edit\n")  # uncommitted work to keep

    markdown = await asyncio.to_thread(codeyard, codeyard_up, "report", "r9")
    assert markdown.returncode == 0, markdown.stderr
    report = markdown.stdout
    assert report.startswith("# codeyard run r9\n")
    assert "> add an api \\<script\\>alert(1)\\</script\\>" in report
    for heading in ("### a: models", "### b: api", "### c: docs"):
        assert heading in report
    assert "  t1 --> t2\n  t2 --> t3\n" in report
    assert "| result branch | `codeyard/r9` |" in report
    assert "**attempt 1: test_failure**" in report  # the scripted tester failed b once
    assert "- attempt 2: coding → testing → reviewing → gated → merged" in report
    assert "**allow**" in report  # the gate's decisions on each merge
    assert "| tasks | 3: 3 merged |" in report

    page = tmp_path / "r9.html"
    written = await asyncio.to_thread(codeyard, codeyard_up, "report", "r9", "--html", str(page))
    assert written.returncode == 0, written.stderr
    assert f"wrote {page}" in written.stdout
    tags = Tags()
    tags.feed(page.read_text())
    assert sorted(tags.nodes) == ["a", "b", "c"]
    assert tags.scripts == 0

    unknown = await asyncio.to_thread(codeyard, codeyard_up, "report", "nosuchrun")
    assert unknown.returncode == 1
    assert "no run 'nosuchrun'" in unknown.stderr

    tip = git(repo, "rev-parse", "--short=10", "codeyard/r9").strip()
    rolled = await asyncio.to_thread(codeyard, codeyard_up, "rollback", "r9", "--to", "a")
    assert rolled.returncode == 0, rolled.stderr
    assert f"codeyard/r9: {tip} -> " in rolled.stdout
    assert "dropped 2 commits:" in rolled.stdout
    assert git(repo, "log", "--format=%s", "codeyard/r9").splitlines() == ["models", "initial"]
    assert git(repo, "branch", "--show-current").strip() in ("main", "master")
    assert git(repo, "status", "--porcelain").strip() == "M README.md"
    assert (repo / "README.md").read_text() == "the user's own edit\n"

    again = await asyncio.to_thread(codeyard, codeyard_up, "rollback", "r9", "--to", "a")
    assert "nothing to drop" in again.stdout
    missing = await asyncio.to_thread(
        codeyard, codeyard_up, "rollback", "r9", "--to", "zz", "--repo", str(repo)
    )
    assert missing.returncode == 1
    assert "no commit of task 'zz' on codeyard/r9" in missing.stderr


def test_formats_that_cannot_both_be_given_are_refused_before_nats_is_asked(
    tmp_path: Path,
) -> None:
    """--json printed the data and wrote none of the files named; one path for both formats
    was written twice (`wrote r.html` twice), the HTML lost. No NATS runs here: refused first."""
    env = isolated_env(tmp_path)
    both = codeyard(env, "report", "r1", "--json", "--html", str(tmp_path / "r.html"))
    assert both.returncode == 2, both.stderr
    assert "--json prints the report's data: give it alone" in both.stderr
    same = str(tmp_path / "r.out")
    twice = codeyard(env, "report", "r1", "--html", same, "--markdown", same)
    assert twice.returncode == 2, twice.stderr
    assert "--html and --markdown name the same file" in twice.stderr
    assert not (tmp_path / "r.html").exists()
    assert not (tmp_path / "r.out").exists()


def test_a_rollback_to_no_task_and_an_endless_listen_are_bad_input(tmp_path: Path) -> None:
    """`rollback RUN --to ''` exited 1 after asking NATS, and `workers --wait inf` listened for
    ever; both are the command line's mistakes: exit 2, before NATS is asked."""
    env = isolated_env(tmp_path)
    nowhere = codeyard(env, "rollback", "r1", "--to", "")
    assert nowhere.returncode == 2, nowhere.stderr
    assert "'' is not a task id" in nowhere.stderr
    for endless in ("inf", "nan", "1e300"):
        listening = codeyard(env, "workers", "--wait", endless, timeout=60)
        assert listening.returncode == 2, listening.stderr
