"""`codeyard up` as a real process: embedded server up, topology ready, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from codeyard.bus import Bus
from codeyard.bus.embedded import free_port
from codeyard.bus.subjects import EVENT_STREAM, RESULT_STREAM, WORK_STREAM
from codeyard.schemas import RunStatus, StatusQuery
from tests.coordinator.harness import ask


async def test_up_runs_an_embedded_server_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"CODEYARD_DATA_DIR": str(tmp_path), "CODEYARD_NATS_PORT": str(port)}
    env.pop("NATS_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeyard",
        "up",
        "--no-agents",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    try:
        while b"Ctrl-C stops" not in output:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line, f"codeyard up exited early: {output.decode()}"
            output += line
        assert f"nats://127.0.0.1:{port}".encode() in output

        bus = await Bus.connect(f"nats://127.0.0.1:{port}")
        streams = {s.config.name for s in await bus.js.streams_info()}
        status = await ask(bus, "status", StatusQuery())  # the coordinator child answers
        await bus.close()
        assert {WORK_STREAM, RESULT_STREAM, EVENT_STREAM} <= streams
        assert isinstance(status, RunStatus)
        assert (tmp_path / "nats" / "jetstream").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "nats-server still running"


async def test_up_with_an_unreachable_nats_url_fails_clearly(tmp_path: Path) -> None:
    env = os.environ | {"NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeyard",
        "up",
        "--no-agents",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b"cannot reach NATS" in stderr


async def test_up_without_an_llm_explains_how_to_configure_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_LLM"))}
    env["CODEYARD_LOCAL_LLM"] = "0"  # where codeyard[local] is installed it would be used
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codeyard", "up", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    message = stderr.decode()
    assert "OPENAI_BASE_URL" in message
    assert "codeyard[local]" in message
    assert "CODEYARD_LLM_" in message
