"""End to end: `codeyard up` and `codeyard run` as real processes, a scripted LLM server, and the
sample repository in tests/fixtures/calc. The goal needs three dependent tasks; the tester's
test catches a bug the coder fixes on its second attempt, and the reviewer sends the docs back
once. The run must end with every task merged and the repository's tests passing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codeyard.bus.embedded import free_port
from codeyard.sandbox import SandboxUnavailable, default_sandbox
from codeyard.workspace.git import checkout, git
from tests.processes import start, stop

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "fixtures" / "calc"


def sandbox_missing() -> str:
    try:
        default_sandbox()
    except SandboxUnavailable as exc:
        return str(exc)
    return ""


pytestmark = pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    script = str(HERE / "calc_script.json")
    llm, ready = await start(
        "-m",
        "codeyard.testing.openai_server",
        "--script",
        script,
        "--record",
        "/tmp/rec.jsonl",
        env=base,
        ready=b"READY",
    )
    env = base | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "CODEYARD_NATS_PORT": str(free_port()),
        "OPENAI_BASE_URL": ready.removeprefix("READY "),
        "OPENAI_API_KEY": "test-key",
        "CODEYARD_LLM_MAX_RETRIES": "1",
    }
    try:
        up, _ = await start("-m", "codeyard", "up", "--coders", "2", env=env, ready=b"Ctrl-C stops")
    except BaseException:
        await stop(llm)
        raise
    try:
        yield env
    finally:
        await stop(up, 60)
        await stop(llm)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "calc"
    shutil.copytree(FIXTURE, path)
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    return path


async def test_a_goal_becomes_three_reviewed_tested_commits(
    services: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    goal = "add subtract and multiply to calc, and document every operation"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "codeyard", "run", goal, "--repo", str(repo), "--run-id", "e2e"],
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
    tests = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=delivered,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
