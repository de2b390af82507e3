"""End to end: `codeyard bench humaneval` on two problems against `codeyard up` and a scripted
LLM. Through the pipeline the coder solves HumanEval/0 and botches HumanEval/2; single-shot, the
reverse. The harness must score each problem from its hidden tests (pass@1 1/2 both ways), and
those tests must never reach the model nor the coder's repository. Run again with the same
--run-id, it must refuse instead of reporting the runs of the first as new."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codeyard.bench.humaneval import load_problems
from codeyard.workspace.git import git
from tests.e2e.stack import codeyard_stack, sandbox_missing

pytestmark = pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")

PROBLEMS = load_problems(["HumanEval/0", "HumanEval/2"])


def solution(problem: dict[str, Any], right: bool) -> str:
    body = problem["canonical_solution"] if right else "    return 0.0\n"
    return str(problem["prompt"]) + body


def script() -> list[dict[str, Any]]:
    close, truncate = PROBLEMS
    rules: list[dict[str, Any]] = []
    for problem, right in ((close, True), (truncate, False)):
        edit = {"kind": "write", "path": "solution.py", "content": solution(problem, right)}
        rules.append(
            {
                "tool": "submit_edits",
                "contains": problem["entry_point"],
                "replies": [{"arguments": {"summary": "implement it", "edits": [edit]}}],
            }
        )
        rules.append(
            {
                "tool": "submit_solution",
                "contains": problem["entry_point"],
                "replies": [{"arguments": {"code": solution(problem, not right)}}],
            }
        )
    rules.append(
        {"tool": "submit_tests", "replies": [{"arguments": {"rationale": "ok", "edits": []}}]}
    )
    rules.append(
        {"tool": "submit_review", "replies": [{"arguments": {"comments": [], "approved": True}}]}
    )
    return rules


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    path = tmp_path / "humaneval_script.json"
    path.write_text(json.dumps(script()))
    async with codeyard_stack(tmp_path, path) as env:
        yield env


async def test_bench_scores_each_problem_from_its_hidden_tests(
    services: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    command = [sys.executable, "-m", "codeyard", "bench", "humaneval", "--problems", "0,2"]
    # relative, as a user types it: the services clone from elsewhere, so it is sent absolute
    command += ["--run-id", "he", "--workdir", work.name, "--json"]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        env=services,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)

    rows = {row["problem"]: row for row in report["problems"]}
    assert rows["HumanEval/0"]["pipeline"] is True
    assert rows["HumanEval/2"]["pipeline"] is False
    assert rows["HumanEval/0"]["single_shot"] is False
    assert rows["HumanEval/2"]["single_shot"] is True
    assert rows["HumanEval/2"]["run_state"] == "done"  # delivered, then failed the hidden tests
    for method in ("pipeline", "single_shot"):
        assert report[method]["passed"] == 1
        assert report[method]["problems"] == 2
        assert report[method]["pass_at_1"] == 0.5
        assert report[method]["prompt_tokens"] > 0
    assert report["ratio"] == 1.0
    assert report["pipeline"]["calls"] >= 6  # coder, tester, reviewer per problem
    assert report["single_shot"]["calls"] == 2

    # the hidden tests reached neither the model nor the coder's repository
    requests = (tmp_path / "llm-requests.jsonl").read_text()
    assert "has_close_elements" in requests
    assert "truncate_number" in requests
    for problem in PROBLEMS:
        assert "def check(candidate)" in problem["test"]
        hidden = [line.strip() for line in problem["test"].splitlines() if "candidate(" in line]
        assert hidden
        for line in [*hidden, "def check(candidate)"]:
            assert line not in requests
        name = problem["task_id"].replace("/", "_")
        repo = work / name
        branch = f"codeyard/he-{name.rsplit('_', 1)[-1]}"
        for path in git(repo, "ls-tree", "-r", "--name-only", branch).split():
            text = git(repo, "show", f"{branch}:{path}")
            assert "def check(" not in text, path
            assert "candidate(" not in text, path

    # again with the same --run-id: refused at once, not the old runs reported as measured now
    again = [*command[: command.index("--workdir") + 1], str(tmp_path / "again"), "--json"]
    refused = await asyncio.to_thread(
        subprocess.run, again, env=services, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == ""
    assert refused.stderr == (
        "error: --run-id 'he' is taken: runs he-0 (done), he-2 (done) exist already, and a "
        "benchmark measures new runs only; choose another --run-id, or leave it out for a new "
        "prefix each time\n"
    )
    assert (tmp_path / "llm-requests.jsonl").read_text() == requests  # the model not asked
    assert not (tmp_path / "again").exists()
