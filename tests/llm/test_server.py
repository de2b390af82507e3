"""The scripted OpenAI-compatible server itself: matching rules, errors, process mode."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import openai
import pytest

from codeyard.llm import ChatMessage, LLMRejected, OpenAIClient
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, VALID, Plan, ask, settings


async def test_process_mode_prints_ready_and_answers(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"tool": TOOL, "replies": [{"arguments": VALID}]}]))
    record = tmp_path / "requests.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeyard.testing.openai_server",
        "--script",
        str(script),
        "--record",
        str(record),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("READY http://127.0.0.1:"), line
        base_url = line.split()[1]
        assert base_url.endswith("/v1")

        configured = settings(base_url)
        async with OpenAIClient(configured) as client:
            done = await client.structured(
                "planner", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
            )
        assert done.value == Plan.model_validate(VALID)
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 20)

    assert code == 0
    [recorded] = [json.loads(line) for line in record.read_text().splitlines()]
    assert (recorded["method"], recorded["path"]) == ("POST", "/v1/chat/completions")
    assert recorded["body"]["messages"] == ASK


async def test_models_are_listed_for_the_real_client() -> None:
    async with ScriptedOpenAI([]) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        models = await client.models.list()
        await client.close()

    assert [model.id for model in models.data] == ["scripted"]


async def test_a_request_no_rule_matches_is_a_400_naming_it() -> None:
    script = [{"tool": "other_tool", "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        with pytest.raises(LLMRejected) as failure:
            await ask(server)

    assert failure.value.status == 400
    assert f"no scripted rule left for tool '{TOOL}'" in str(failure.value)


async def test_rules_match_on_the_last_user_message_and_can_run_out() -> None:
    script = [
        {"tool": TOOL, "contains": "JWT", "repeat_last": False, "replies": [{"arguments": VALID}]},
        {"tool": TOOL, "replies": [{"arguments": {"title": "fallback", "steps": ["x"]}}]},
    ]
    other: list[ChatMessage] = [{"role": "user", "content": "Something else"}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        titles = [
            (await ask(server, messages=question)).value.title for question in (ASK, ASK, other)
        ]

    # JWT once (then that rule ran out), the fallback after it and for the other question.
    assert titles == ["auth", "fallback", "fallback"]


async def test_response_format_json_schema_is_refused() -> None:
    """llama.cpp's server fails it, so codeyard must never depend on it."""
    async with ScriptedOpenAI(parse_script([{"replies": [{"text": "hi"}]}])) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as failure:
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "plan", "schema": Plan.model_json_schema()},
                },
            )
        plain = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()

    assert "force a tool call instead" in failure.value.message
    assert plain.choices[0].message.content == "hi"
    assert plain.choices[0].finish_reason == "stop"


def test_thread_mode_serves_sync_callers_and_unknown_routes_get_an_error_body() -> None:
    with ScriptedOpenAI([]) as server:
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as response:
            listed = json.load(response)
        request = urllib.request.Request(f"{server.base_url}/embeddings", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(request, timeout=5)
        error_body = json.load(failure.value)
        failure.value.close()
        recorded = [(r.method, r.path) for r in server.requests]

    assert listed["data"][0]["id"] == "scripted"
    assert failure.value.code == 404
    assert error_body["error"]["message"] == "the scripted server has no route POST /v1/embeddings"
    assert error_body["error"]["type"] == "invalid_request_error"
    assert recorded == [("GET", "/v1/models"), ("POST", "/v1/embeddings")]


@pytest.mark.parametrize(
    "rule",
    [
        {"replies": [{"text": "a", "status": 500}]},
        {"replies": [{}]},
        {"replies": []},
        {"replies": [{"text": "a", "times": 0}]},
        {"replies": [{"text": "a"}], "tol": "typo"},
    ],
)
def test_mistakes_in_a_script_are_refused(rule: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        parse_script([rule])
