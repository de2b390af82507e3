"""`codeyard up` as a real process: embedded server up, topology ready, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import nats.errors
import pytest

from codeyard.bus import Bus
from codeyard.bus.credentials import read_credentials
from codeyard.bus.embedded import free_port
from codeyard.bus.subjects import EVENT_STREAM, RESULT_STREAM, WORK_STREAM
from codeyard.schemas import RunStatus, StatusQuery
from tests.coordinator.harness import ask
from tests.processes import start, stop


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

        url = f"nats://127.0.0.1:{port}"
        credentials = tmp_path / "nats" / "credentials"
        coordinator = await Bus.connect(
            url, credentials=read_credentials(credentials / "coordinator.env")
        )
        streams = {s.config.name for s in await coordinator.js.streams_info()}
        await coordinator.close()
        ctl = await Bus.connect(url, credentials=read_credentials(credentials / "ctl.env"))
        status = await ask(ctl, "status", StatusQuery())  # the coordinator child answers
        await ctl.close()
        assert {WORK_STREAM, RESULT_STREAM, EVENT_STREAM} <= streams
        assert isinstance(status, RunStatus)
        assert (tmp_path / "nats" / "jetstream").is_dir()
        with pytest.raises(nats.errors.NoServersError):  # the embedded server wants a user
            await Bus.connect(url, connect_attempts=1)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "nats-server still running"


async def run_to_end(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """`codeyard ARGS` expected to exit by itself; killed if it does not, so nothing leaks."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codeyard", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """No LLM, a private data dir and port: whatever goes wrong, the user's setup is safe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    return env | {"CODEYARD_DATA_DIR": str(tmp_path), "CODEYARD_NATS_PORT": str(free_port())}


async def test_up_with_an_unreachable_nats_url_fails_clearly(tmp_path: Path) -> None:
    env = isolated_env(tmp_path) | {"NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 1
    assert b"cannot reach NATS" in stderr


async def test_up_without_an_llm_explains_how_to_configure_one(tmp_path: Path) -> None:
    env = isolated_env(tmp_path) | {"CODEYARD_LOCAL_LLM": "0"}  # else codeyard[local] serves
    code, stderr = await run_to_end(env, "up")
    assert code == 2
    message = stderr.decode()
    assert "OPENAI_BASE_URL" in message
    assert "codeyard[local]" in message
    assert "CODEYARD_LLM_" in message


async def test_a_restarted_up_keeps_the_credentials_it_generated(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    url = f"nats://127.0.0.1:{env['CODEYARD_NATS_PORT']}"
    ctl_file = tmp_path / "nats" / "credentials" / "ctl.env"
    seen = []
    for _ in range(2):
        up, _ = await start("-m", "codeyard", "up", "--no-agents", env=env, ready=b"Ctrl-C stops")
        try:
            credentials = read_credentials(ctl_file)
            assert credentials is not None
            seen.append(credentials)
            ctl = await Bus.connect(url, credentials=credentials)
            status = await ask(ctl, "status", StatusQuery())
            await ctl.close()
            assert isinstance(status, RunStatus)
        finally:
            await stop(up)
    assert seen[0] == seen[1]
    assert ctl_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "nats" / "nats-server.conf").stat().st_mode & 0o777 == 0o600


# --- configuration `up` checks before starting anything ----------------------------------------


async def test_up_refuses_a_dashboard_token_too_short_before_starting_anything(
    tmp_path: Path,
) -> None:
    """The dashboard, which checks its token, runs as a child: `up` used to start everything,
    print a sign-in URL, and restart the failing dashboard for ever."""
    env = isolated_env(tmp_path) | {"CODEYARD_DASHBOARD_TOKEN": "short"}
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert b"CODEYARD_DASHBOARD_TOKEN: the dashboard token must be at least 16" in stderr
    assert not (tmp_path / "nats").exists()
