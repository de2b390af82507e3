"""Whether anything listens at the LLM endpoint, as `codeyard up` asks when it starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from codeyard.bus.embedded import free_port
from codeyard.llm import LLMSettings
from codeyard.llm.reachability import endpoint_unreachable


def test_an_endpoint_with_a_listener_is_reachable_and_one_without_is_not() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert endpoint_unreachable(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1")) is None
    closed = endpoint_unreachable(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1"))
    assert closed is not None
    assert "refused" in closed


async def test_up_warns_of_an_llm_endpoint_that_does_not_answer(tmp_path: Path) -> None:
    """The run waited minutes (the agents' retries) and `codeyard run` showed nothing."""
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env |= {
        "CODEYARD_DATA_DIR": str(tmp_path),
        "CODEYARD_NATS_PORT": str(free_port()),
        "CODEYARD_LOCAL_LLM": "0",
        "OPENAI_BASE_URL": endpoint,
    }
    env.pop("NATS_URL", None)
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codeyard", "up", "--no-dashboard"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert up.stderr is not None
        line = await asyncio.wait_for(up.stderr.readline(), 30)
    finally:
        up.send_signal(signal.SIGTERM)
        await asyncio.wait_for(up.communicate(), 60)
    assert line.decode().startswith(f"warning: the LLM endpoint {endpoint} does not answer (")
