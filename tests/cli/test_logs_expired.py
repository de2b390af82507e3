"""Following a run that ended and whose events expired (CODEYARD_EVENT_RETENTION_DAYS) while
its record did not: `logs -f` and `run --run-id` again used to wait for an end event that would
never come. A real nats-server and coordinator; the commands are real processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import EVENT_STREAM
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import CancelRun, RunEvent, RunState, RunStateChanged, TaskSpec
from tests.coordinator.harness import ask, running_coordinator
from tests.processes import codeyard
from tests.repositories import one_commit_repo


async def test_a_run_whose_events_expired_is_not_waited_for_once_it_has_ended(
    nats_server: EmbeddedNats, bus: Bus, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
    }
    repo = one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    submission = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "x1")

    async def cli(*args: str) -> tuple[int, str, str, float]:
        started = time.monotonic()
        # a command left waiting for ever is killed, and fails the test, after a minute
        done = await asyncio.to_thread(codeyard, env, *args, timeout=60)
        return done.returncode, done.stdout, done.stderr, time.monotonic() - started

    async with running_coordinator(Coordinator(bus, name="c", capacity=4)):
        # no worker takes the task: the run goes on until it is cancelled
        code, _, err, _ = await cli("run", *submission, "--timeout", "2")
        assert code == 1
        assert "run x1 keeps going" in err
        await ask(bus, "cancel", CancelRun(run_id="x1", reason="changed my mind"))
        await bus.js.purge_stream(EVENT_STREAM)  # as if they were older than the retention

        code, out, err, took = await cli("logs", "x1", "--follow")
        assert code == 1, err  # as `codeyard run` exits for a cancelled run
        assert took < 30  # it waited for ever
        [outcome] = out.splitlines()
        assert outcome.endswith(" run cancelled (changed my mind)")
        assert "how it ended is from the run's record" in err

        code, out, _, _ = await cli("logs", "x1", "--follow", "--json")
        assert code == 1
        [event] = [msgspec.json.decode(line, type=RunEvent) for line in out.splitlines()]
        assert isinstance(event, RunStateChanged)
        assert event.state is RunState.CANCELLED

        # the same submission again follows the run, which has ended: at once, exit 1 as for a
        # cancelled run (it waited until --timeout, then said the run keeps going)
        code, out, err, took = await cli("run", *submission, "--timeout", "30")
        assert code == 1, out + err
        assert took < 30
        assert "run x1 exists already (cancelled) with this goal" in err
        assert "keeps going" not in err
        assert "run cancelled (changed my mind)" in out
        assert "run x1 cancelled: 0/1 tasks merged" in out
        assert "reason: changed my mind" in out
