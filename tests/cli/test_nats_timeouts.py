"""A NATS that is reached but does not answer a JetStream request in time: nats-py's timeout is
a builtin `TimeoutError` (so an `OSError` too), and commands took it for NATS not being there
or for the run not finishing in time. A real nats-server without JetStream, whose JetStream
requests a silent subscriber takes, and a stand-in coordinator; the commands are real
processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus
from codeyard.bus.embedded import find_nats_server, free_port
from codeyard.bus.subjects import ctl_subject
from codeyard.schemas import Accepted, Run, RunStatus, StatusQuery, SubmitRun, decode
from codeyard.schemas.codec import encode
from codeyard.schemas.messages import unknown_run
from tests.processes import codeyard, kill
from tests.repositories import one_commit_repo


@pytest.fixture
def url() -> Iterator[str]:
    """A nats-server of its own, without JetStream."""
    port = free_port()
    server = subprocess.Popen(
        [str(find_nats_server()), "--addr", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        kill(server)


@pytest.fixture
async def slow_jetstream(url: str) -> AsyncIterator[Bus]:
    """A coordinator that knows run r1 and accepts every submission, and a JetStream whose
    requests are received and never answered."""
    bus = await Bus.connect(url, name="stand-ins", quiet=True)

    async def status(msg: Msg) -> None:
        run_id = decode(msg.data, StatusQuery).run_id
        known = RunStatus(run_id=run_id, runs=[Run(run_id=run_id, goal="g")])
        await msg.respond(encode(known if run_id == "r1" else unknown_run(run_id)))

    async def submit(msg: Msg) -> None:
        run_id = decode(msg.data, SubmitRun).run_id
        await msg.respond(encode(Accepted(run_id=run_id, created=True)))

    async def never_answer(_: Msg) -> None:
        pass

    await bus.nc.subscribe(ctl_subject("status"), cb=status)
    await bus.nc.subscribe(ctl_subject("submit"), cb=submit)
    await bus.nc.subscribe("$JS.API.>", cb=never_answer)
    await bus.nc.flush()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def env(url: str, tmp_path: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": url,
        "COLUMNS": "400",
    }


NATS_TOO_SLOW = (
    "error: NATS did not answer in time (TimeoutError()): it may be busy or restarting; try again\n"
)


@pytest.mark.usefixtures("slow_jetstream")
async def test_logs_says_nats_did_not_answer_rather_than_that_it_cannot_be_reached(
    env: dict[str, str],
) -> None:
    shown = await asyncio.to_thread(codeyard, env, "logs", "r1", timeout=60)
    assert shown.returncode == 1
    assert shown.stderr == NATS_TOO_SLOW


@pytest.mark.usefixtures("slow_jetstream")
async def test_run_says_nats_did_not_answer_rather_than_that_the_run_did_not_finish(
    env: dict[str, str], tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})
    args = ("run", "g", "--repo", str(repo), "--run-id", "r2", "--timeout", "600")
    submitted = await asyncio.to_thread(codeyard, env, *args, timeout=60)
    assert submitted.returncode == 1
    assert submitted.stderr.startswith(NATS_TOO_SLOW), submitted.stderr
    assert "run r2 keeps going" in submitted.stderr
    assert "did not finish" not in submitted.stderr


@contextlib.asynccontextmanager
async def coordinator_taking_submissions_silently(url: str) -> AsyncIterator[None]:
    """A coordinator that takes submissions and does not answer: one cloning a large repository."""
    bus = await Bus.connect(url, name="stand-in", quiet=True)

    async def never_answer(_: Msg) -> None:
        pass

    await bus.nc.subscribe(ctl_subject("submit"), cb=never_answer)
    await bus.nc.flush()
    try:
        yield
    finally:
        await bus.close()


@pytest.mark.parametrize("listening", [True, False], ids=["busy", "none"])
async def test_run_timeout_covers_the_submission(
    env: dict[str, str], url: str, tmp_path: Path, listening: bool
) -> None:
    """`--timeout 2` gives up on the submission after 2 s too: before, it waited 30 s for no
    coordinator and 10 minutes for a silent one."""
    repo = one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})
    args = ("run", "g", "--repo", str(repo), "--timeout", "2")
    async with contextlib.AsyncExitStack() as stack:
        if listening:
            await stack.enter_async_context(coordinator_taking_submissions_silently(url))
        gave_up = await asyncio.to_thread(codeyard, env, *args, timeout=60)
    assert gave_up.returncode == 1, gave_up.stderr
    run_id = gave_up.stdout.split()[1].rstrip(":")
    if listening:  # it may still be taken: named, so that it is not sent again as another run
        assert "did not answer on cy.ctl.submit in time (each try waited 2s, for 2s in all)" in (
            gave_up.stderr
        )
        assert f"run {run_id} may still start: `codeyard status {run_id}` tells" in gave_up.stderr
    else:
        assert "no coordinator answered on cy.ctl.submit within 2s" in gave_up.stderr
