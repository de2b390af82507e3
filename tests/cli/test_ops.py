"""The everyday commands against `codeyard up --no-agents` and scripted workers, all real
processes: `run --yes`, `status`, `logs`, `workers`, `cancel`, and `--json` on each."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from codeyard.schemas import (
    Accepted,
    ApprovalList,
    ArtifactsCollected,
    ControlError,
    Run,
    RunEvent,
    RunState,
    RunStatus,
    TaskSpec,
    TaskState,
    WorkerPresence,
)
from tests.cli.test_run import codeyard_run, repo, running_system
from tests.processes import codeyard, into_a_closed_pipe

__all__ = ["repo"]  # a fixture, shared with test_run


@dataclass
class System:
    env: dict[str, str]
    coder: asyncio.subprocess.Process  # prints HANGING <task> when it takes task `hang`


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """Like test_run's `codeyard_up`, but the coder never answers task `hang`."""
    async with running_system(tmp_path, worker_options=("--hang-on", "hang")) as (env, workers):
        yield System(env=env, coder=workers[0])


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


def run_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`codeyard run` with stdin and stdout on a pseudo-terminal: what a person sees."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "codeyard", "run", *args],
        env=env | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    seen = bytearray()
    while True:  # read as it comes: a full terminal buffer would block the child
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child is gone and the terminal closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    code = process.wait(timeout=120)
    return code, ANSI.sub("", seen.decode(errors="replace"))


def write_plan(path: Path, *tasks: TaskSpec) -> str:
    path.write_bytes(msgspec.json.encode(list(tasks)))
    return str(path)


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(codeyard, env, *args)
    return done.returncode, done.stdout, done.stderr


async def test_everyday_commands_after_runs_approved_with_yes(
    system: System, repo: Path, tmp_path: Path
) -> None:
    env = system.env
    plan = write_plan(
        tmp_path / "plan.json",
        TaskSpec(id="a", title="models"),
        TaskSpec(id="b", title="api", deps=["a"]),
    )
    common = ("--repo", str(repo), "--plan", plan, "--approve-plan", "--yes")
    as_json = await asyncio.to_thread(
        codeyard_run, env, "add an api", *common, "--run-id", "r1", "--json"
    )
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    final = msgspec.json.decode(as_json.stdout, type=Run)  # nothing else on stdout
    assert final.state is RunState.DONE
    assert "approved " in as_json.stderr
    assert "plan" in as_json.stderr

    lines = await asyncio.to_thread(codeyard_run, env, "more", *common, "--run-id", "r2")
    assert lines.returncode == 0, lines.stdout + lines.stderr
    assert "run plan_approval" in lines.stdout
    assert "approved " in lines.stdout
    assert "run r2 done: 2/2 tasks merged" in lines.stdout

    live_args = ("live", *common, "--run-id", "r4")
    code, screen = await asyncio.to_thread(run_on_a_terminal, env, *live_args)
    assert code == 0, screen
    assert "a models" in screen  # the tree, with each task
    assert "b api" in screen
    assert "2/2 merged" in screen
    assert "approved " in screen
    assert "run r4 done: 2/2 tasks merged" in screen

    code, out, _ = await cli(env, "status")
    assert code == 0
    assert "r1" in out
    assert "r2" in out
    assert "done" in out
    code, out, _ = await cli(env, "status", "--json")
    assert code == 0
    assert {run.run_id for run in msgspec.json.decode(out, type=RunStatus).runs} >= {"r1", "r2"}
    code, out, _ = await cli(env, "status", "r1")
    assert code == 0
    assert "models" in out
    assert "merged" in out
    assert "api" in out
    code, out, _ = await cli(env, "status", "r1", "--json")
    [one] = msgspec.json.decode(out, type=RunStatus).runs
    assert {task.state for task in one.tasks.values()} == {TaskState.MERGED}
    code, _, err = await cli(env, "status", "nosuchrun")
    assert code == 1
    assert "no run 'nosuchrun'" in err

    code, out, _ = await cli(env, "logs", "r1")
    assert code == 0
    assert "a: coding (attempt 1)" in out
    assert "b: merged (attempt 1)" in out
    assert "run done" in out
    code, followed, _ = await cli(env, "logs", "r1", "--follow")  # over already: ends at once
    assert code == 0
    assert "run done" in followed
    code, out, _ = await cli(env, "logs", "r1", "--json")
    events = [msgspec.json.decode(line, type=RunEvent) for line in out.splitlines()]
    assert any(getattr(event, "state", None) is RunState.DONE for event in events)
    left = await asyncio.to_thread(into_a_closed_pipe, env, "logs", "r1", "--json")
    assert left.returncode == 1  # the reader left (`| head -1`): nothing to say of NATS
    assert left.stderr == ""
    code, _, err = await cli(env, "logs", "nosuchrun")
    assert code == 1

    code, _, err = await cli(env, "workers", "--wait", "0.5")
    assert "less than the 3s between two announcements of a worker" in " ".join(err.split())
    code, out, _ = await cli(env, "workers", "--wait", "4")
    assert code == 0
    for role in ("coder", "tester", "review"):
        assert role in out
    assert "idle" in out
    code, out, _ = await cli(env, "workers", "--json", "--wait", "4")
    heard = msgspec.json.decode(out, type=list[WorkerPresence])
    assert {presence.role for presence in heard} == {"coder", "tester", "review"}

    code, out, _ = await cli(env, "approvals", "--json")
    assert code == 0
    assert msgspec.json.decode(out, type=ApprovalList).approvals == []
    code, out, _ = await cli(env, "approve", "0000000000000000", "--json")
    assert code == 1
    assert "no pending approval" in msgspec.json.decode(out, type=ControlError).error

    code, out, _ = await cli(env, "report", "r1", "--json")
    assert code == 0
    assert json.loads(out)["run_id"] == "r1"

    # the runs' snapshots and clones are far younger than the 30 days of retention: nothing
    # goes yet
    code, out, _ = await cli(env, "gc", "--dry-run", "--json")
    assert code == 0
    dry = msgspec.json.decode(out, type=ArtifactsCollected)
    assert dry.dry_run
    assert dry.deleted == []
    assert dry.recent >= 1
    assert dry.clones == []
    assert dry.recent_clones == 3  # r1, r2 and r4 ended just now
    assert dry.retention_seconds == 30 * 86400
    code, out, _ = await cli(env, "gc")
    assert code == 0
    assert "deleted 0 objects" in out
    assert "deleted 0 integration clones (0 bytes); kept 0 of open runs and 3" in out


async def test_cancel_a_running_run(system: System, repo: Path, tmp_path: Path) -> None:
    env = system.env
    plan = write_plan(tmp_path / "plan.json", TaskSpec(id="hang", title="never answered"))
    args = ("g", "--repo", str(repo), "--plan", plan, "--run-id", "r3")
    following = asyncio.create_task(asyncio.to_thread(codeyard_run, env, *args))
    assert system.coder.stdout is not None
    line = await asyncio.wait_for(system.coder.stdout.readline(), 60)
    assert line.strip() == b"HANGING hang"

    code, out, _ = await cli(env, "workers", "--json", "--wait", "4")
    heard = msgspec.json.decode(out, type=list[WorkerPresence])
    coder = next(presence for presence in heard if presence.role == "coder")
    assert coder.busy

    code, out, err = await cli(env, "cancel", "r3", "--reason", "changed my mind", "--json")
    assert code == 0, err
    msgspec.json.decode(out, type=Accepted)
    result = await following
    assert result.returncode == 1
    assert "run cancelled" in result.stdout
    assert "run r3 cancelled: 0/1 tasks merged" in result.stdout

    code, out, _ = await cli(env, "status", "r3")
    assert "cancelled" in out
    code, out, err = await cli(env, "cancel", "r3")  # again: done, not refused
    assert code == 0, err
    assert out.strip() == "r3 was already cancelled"
