"""End to end, issue 6's acceptance: two coders work in parallel on different files and both
land; two tasks that rewrite the same line conflict at the merge, and the second one's coder
resolves it on the new head; the user's checkout is untouched; one commit per task; the report
renders and names every task. Real processes, a scripted LLM server, the calc sample repo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codeyard.workspace.git import git
from tests.e2e.stack import codeyard_stack, sandbox_missing
from tests.processes import codeyard

pytestmark = pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    script = Path(__file__).resolve().parent / "parallel_script.json"
    async with codeyard_stack(tmp_path, script) as env:
        yield env


async def test_parallel_work_lands_and_a_conflict_is_resolved(
    services: dict[str, str], repo: Path
) -> None:
    (repo / "scratch.txt").write_text("the user's uncommitted work\n")
    branch = git(repo, "branch", "--show-current").strip()
    goal = "add greet and farewell, and make the README heading say what calc is and in what"
    result = await asyncio.to_thread(
        codeyard, services, "run", goal, "--repo", str(repo), "--run-id", "par"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "run par done: 4/4 tasks merged" in output

    log = git(repo, "log", "--format=%s%n%b%n--", "codeyard/par")
    commits = git(repo, "log", "--format=%s", "codeyard/par").splitlines()
    assert sorted(commits[:4]) == sorted(
        [
            "Add greet",
            "Add farewell",
            "Describe calc in the README heading",
            "Name the language in the README heading",
        ]
    )
    assert commits[4:] == ["initial"]  # one commit per task, nothing else
    # greet and farewell were coded at the same time on the base and both landed first time
    assert "Codeyard-Task: par/greet/1" in log
    assert "Codeyard-Task: par/farewell/1" in log
    # exactly one of the two heading tasks conflicted and landed on its second attempt
    retried = [task for task in ("title", "language") if f"Codeyard-Task: par/{task}/2" in log]
    assert len(retried) == 1, log
    assert f"{retried[0]}: coding (attempt 2)" in output
    assert git(repo, "show", "codeyard/par:README.md").startswith(
        "# calc (Python): a tiny calculator\n"
    )
    assert "hello" in git(repo, "show", "codeyard/par:calc/greet.py")
    assert "goodbye" in git(repo, "show", "codeyard/par:calc/farewell.py")

    # the user's branch, tree and uncommitted work are as they were
    assert git(repo, "branch", "--show-current").strip() == branch
    assert git(repo, "status", "--porcelain") == "?? scratch.txt\n"
    assert (repo / "README.md").read_text() == "# calc\n\nAdds numbers.\n"

    report = await asyncio.to_thread(codeyard, services, "report", "par")
    assert report.returncode == 0, report.stderr
    for task in ("greet", "farewell", "title", "language"):
        assert task in report.stdout
    assert "conflict" in report.stdout.lower()  # the retried task's feedback is in the report
