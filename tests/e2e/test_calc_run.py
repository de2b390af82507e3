"""End to end: `codeyard up` and `codeyard run` as real processes, a scripted LLM server, and the
sample repository in tests/fixtures/calc. The goal needs three dependent tasks; the tester's
test catches a bug the coder fixes on its second attempt, and the reviewer sends the docs back
once. The run must end with every task merged and the repository's tests passing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codeyard.workspace.git import checkout, git
from tests.e2e.stack import codeyard_stack, sandbox_missing

HERE = Path(__file__).resolve().parent
GOAL = "add subtract and multiply to calc, and document every operation"


pytestmark = pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    async with codeyard_stack(tmp_path, HERE / "calc_script.json") as env:
        yield env


async def test_a_goal_becomes_three_reviewed_tested_commits(
    services: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "codeyard", "run", GOAL, "--repo", str(repo), "--run-id", "e2e"],
        env=services,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "run e2e done: 3/3 tasks merged" in output
    assert "multiply: coding (attempt 2)" in output  # the failing test sent it back
    assert "docs: coding (attempt 2)" in output  # the review sent it back

    commits = git(repo, "log", "--format=%s", "codeyard/e2e").splitlines()
    assert commits == ["Document the operations", "Add multiply", "Add subtract", "initial"]
    multiply = git(repo, "log", "-1", "--format=%B", "codeyard/e2e~1")
    assert "Reviewed-by: review" in multiply
    assert "Codeyard-Task: e2e/multiply/2" in multiply  # the second attempt landed
    assert "Tests: " in multiply  # the tester's count of what ran
    # the workers read the code from snapshots in the object store, not the coordinator's clone:
    # a full bundle of the base, then one increment per merge
    bundles = list((tmp_path / "data" / "cache" / "snapshots" / "bundles").glob("*.bundle"))
    assert len(bundles) >= 3, bundles
    assert git(repo, "status", "--porcelain") == ""  # the user's tree is untouched

    delivered = checkout(repo, tmp_path / "delivered", "codeyard/e2e")
    assert "return a * b" in (delivered / "calc" / "ops.py").read_text()
    # the tester's test for multiply is delivered with it, in its commit
    assert "assert multiply(2, 3) == 6" in (delivered / "tests" / "test_multiply.py").read_text()
    in_commit = git(repo, "show", "--name-only", "--format=", "codeyard/e2e~1").split()
    assert sorted(in_commit) == ["calc/ops.py", "tests/test_multiply.py"], in_commit
    tests = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=delivered,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout  # the repository's two and the tester's


def test_the_readme_runs_what_this_test_runs(repo_root: Path) -> None:
    """Its offline try-out is this run: the same goal, script and sample repository."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert f'codeyard run "{GOAL}" --repo /tmp/calc' in readme
    assert "--script tests/e2e/calc_script.json" in readme
    assert (repo_root / "tests" / "e2e" / "calc_script.json").is_file()
    assert "cp -r tests/fixtures/calc /tmp/calc" in readme
