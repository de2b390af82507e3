"""`codeyard run --test-command`: the command reaches the run, its planner-less plan (--plan)
and its tester, through a real coordinator on the tests' nats-server; the CLI runs as a
process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    Result,
    ReviewResult,
    Run,
    RunState,
    TaskSpec,
    TestRequest,
    TestResult,
    WorkItem,
)
from tests.coordinator.harness import running_coordinator, scripted_coder, workers_of
from tests.processes import codeyard
from tests.repositories import one_commit_repo


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-test")) as coordinator:
        yield coordinator


async def test_the_command_given_is_the_runs_and_its_testers(
    bus: Bus, coordinator: Coordinator, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"Makefile": "test:\n\t@true\n"})
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="add a")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
    }
    tested: list[TestRequest] = []

    async def tester(item: WorkItem) -> Result:
        assert isinstance(item, TestRequest)
        tested.append(item)
        return TestResult(passed=True, output="ok")

    async def reviewer(item: WorkItem) -> Result:
        return ReviewResult(approved=True)

    async with workers_of(bus, {"coder": scripted_coder(), "tester": tester, "review": reviewer}):
        options = ("--repo", str(repo), "--plan", str(plan), "--run-id", "r1", "--json")
        ran = await asyncio.to_thread(
            codeyard, env, "run", "add a", *options, "--test-command", "  make test ", timeout=120
        )

    assert ran.returncode == 0, ran.stderr
    final = msgspec.json.decode(ran.stdout, type=Run)
    assert final.state is RunState.DONE
    assert final.test_command == "make test"  # as given, without the spaces around it
    assert [item.test_command for item in tested] == ["make test"]
