"""`codeyard logs --follow` exits as `codeyard run` does for how the run ended. A real
nats-server and coordinator; the commands are real processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import CancelRun, SubmitRun, TaskSpec
from tests.coordinator.harness import ask, running_coordinator
from tests.processes import codeyard, stop


async def test_following_a_run_to_its_end_exits_as_codeyard_run_would(
    nats_server: EmbeddedNats, bus: Bus, tmp_path: Path
) -> None:
    """It exited 0 whenever the run ended, failed or cancelled too: a script following a run
    could not tell how it ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
    }
    async with running_coordinator(Coordinator(bus, name="c", capacity=4)):
        plan = [TaskSpec(id="a", title="models")]
        await ask(bus, "submit", SubmitRun(run_id="x1", goal="g", plan=plan))
        follower = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "codeyard", "logs", "x1", "--follow"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert follower.stdout is not None
            # a line shown: it follows the run, which no worker takes on, so it goes on
            assert await asyncio.wait_for(follower.stdout.readline(), 60)
            await ask(bus, "cancel", CancelRun(run_id="x1", reason="changed my mind"))
            out, errors = await asyncio.wait_for(follower.communicate(), 60)
        finally:
            await stop(follower)
        assert follower.returncode == 1, errors.decode()
        assert " run cancelled (changed my mind)\n" in out.decode()

        shown = await asyncio.to_thread(codeyard, env, "logs", "x1", timeout=60)
        assert shown.returncode == 0, shown.stderr  # the events shown, whatever they say
        assert " run cancelled (changed my mind)\n" in shown.stdout
