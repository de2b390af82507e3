"""The API key never shows in what an LLM failure is said as, over real HTTP.

What a failure says travels far: logged on each retry, then the worker's reason, the task's
error, the run's events, the dashboard and `codeyard status`. The HTTP stack's own errors may
quote the request's headers, and an endpoint's error page may echo them: the key is taken out
of every such text (and a base URL's password too), whatever the check at start let through.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import SecretStr

from codeyard.agents.asking import ask_model
from codeyard.bus import RetryLater
from codeyard.llm import LLMError, LLMRejected, LLMSettings, LLMUnavailable, OpenAIClient
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, VALID, Plan, ask, settings

SECRET = "sk-live-THIS-IS-THE-SECRET-KEY"


def with_key(server: ScriptedOpenAI, key: str) -> LLMSettings:
    """Settings with `key` as it is, as if the check at start had let it through."""
    return settings(server.base_url, max_retries=1).model_copy(update={"api_key": SecretStr(key)})


async def test_a_key_the_http_client_refuses_is_not_quoted_in_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # h11 refuses the header as "Illegal header value b'Bearer sk-...\n'": before, that text,
    # key and all, was logged and became the worker's reason.
    caplog.set_level(logging.WARNING, logger="codeyard.llm")
    replies = [{"arguments": VALID}]
    async with (
        ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server,
        OpenAIClient(with_key(server, SECRET + "\n")) as client,
    ):
        with pytest.raises(RetryLater) as retry:
            await ask_model(
                client, "planner", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
            )

    reason = str(retry.value)
    assert "connection failed (Illegal header value b'Bearer [redacted]\\n')" in reason
    assert "SECRET-KEY" not in reason
    assert caplog.messages  # the retry was logged...
    assert not [line for line in caplog.messages if "SECRET-KEY" in line]  # ...without the key


ECHOING: dict[str, dict[str, Any]] = {
    "an HTTP error body": {"status": 401, "message": f"Invalid key {SECRET} for this org"},
    "a proxy's page": {
        "raw_body": f"<p>Authorization: Bearer {SECRET}</p>",
        "content_type": "text/html",
    },
    "an error in a 200's body": {"body": {"error": {"message": f"bad key {SECRET}"}}},
}


@pytest.mark.parametrize("reply", ECHOING.values(), ids=ECHOING.keys())
async def test_a_key_the_endpoint_echoes_is_not_repeated(reply: dict[str, Any]) -> None:
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [reply]}])) as server:
        with pytest.raises((LLMRejected, LLMUnavailable)) as failure:
            await ask(server, api_key=SECRET, max_retries=1)

    assert isinstance(failure.value, LLMError)
    assert SECRET not in str(failure.value)
    assert "[redacted]" in str(failure.value)


async def test_the_base_urls_password_is_not_named_with_the_endpoint() -> None:
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"status": 503}]}])) as s:
        url = s.base_url.replace("http://", "http://codeyard:hunter2-hunter2@")
        async with OpenAIClient(settings(url, max_retries=0)) as client:
            with pytest.raises(LLMUnavailable) as failure:
                await client.structured(
                    "planner", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
                )

    assert f"the LLM endpoint {s.base_url}/ failed 1 times" in str(failure.value)
    assert "hunter2" not in str(failure.value)


async def test_a_short_placeholder_key_is_left_in_what_it_happens_to_match() -> None:
    # `OPENAI_API_KEY=local` for a local server: "localhost" in an error stays readable.
    reply = {"status": 401, "message": "no such user at localhost"}
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [reply]}])) as server:
        with pytest.raises(LLMRejected, match="no such user at localhost"):
            await ask(server, api_key="local")
