"""`codeyard status` and `codeyard cancel` against a stand-in coordinator on a real
nats-server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import ctl_subject
from codeyard.schemas import Run, RunStatus
from codeyard.schemas.codec import encode
from tests.processes import codeyard


async def test_status_says_how_many_ended_runs_the_coordinator_left_out(
    nats_server: EmbeddedNats, bus: Bus, tmp_path: Path
) -> None:
    """A status of every run too large for one message leaves out the oldest ended runs and
    counts them: the table alone looked like every run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
        "COLUMNS": "200",
    }
    replies = iter([RunStatus(runs=[Run(run_id="r9", goal="g")], omitted=2), RunStatus(runs=[])])

    async def answer(msg: Msg) -> None:
        await msg.respond(encode(next(replies)))

    coordinator = await bus.nc.subscribe(ctl_subject("status"), cb=answer)
    try:
        some = await asyncio.to_thread(codeyard, env, "status", timeout=60)
        none = await asyncio.to_thread(codeyard, env, "status", timeout=60)
    finally:
        await coordinator.unsubscribe()
    assert some.returncode == 0, some.stderr
    assert "r9" in some.stdout
    assert some.stdout.endswith(
        "and 2 older ended runs left out to fit the reply: `codeyard status RUN` shows any one\n"
    )
    assert none.stdout == "no runs\n"


@pytest.mark.parametrize("verb", ["status", "cancel"])
async def test_an_answer_this_codeyard_cannot_read_says_to_upgrade_not_a_traceback(
    nats_server: EmbeddedNats, bus: Bus, tmp_path: Path, verb: str
) -> None:
    """A newer coordinator may answer with a state this codeyard does not know: the command
    ended in a traceback of the decoding error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": nats_server.url,
        "COLUMNS": "400",
    }

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"type":"RunStatus","runs":[{"run_id":"r1","goal":"g","state":"new"}]}')

    newer = await bus.nc.subscribe(ctl_subject(verb), cb=answer)
    try:
        answered = await asyncio.to_thread(codeyard, env, verb, "r1", timeout=60)
    finally:
        await newer.unsubscribe()
    assert answered.returncode == 1
    assert answered.stderr == (
        f"error: the coordinator's answer on cy.ctl.{verb} could not be read (Invalid enum value "
        "'new' (at $.runs[0].state)): it may be newer than this codeyard; upgrade codeyard\n"
    )
