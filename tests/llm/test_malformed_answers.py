"""HTTP 200 answers that are not what the openai SDK's types say, over real HTTP.

The SDK builds its response objects without validating them, so any part of a completion may be
missing, null or of another type, and a body that is no JSON object comes back as whatever it
decoded to. A completion of an odd shape is the model's bad answer: re-asked, like an invalid
one. A body that is no completion at all is the endpoint failing: retried, like an HTTP 502.
Neither may escape as a TypeError or AttributeError, which a worker would only retry blindly
without counting the tokens spent.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from codeyard.llm import LLMUnavailable
from codeyard.schemas import Usage
from codeyard.testing.openai_script import Answer, parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, TOOL, VALID, Plan, ask

TOKENS = {"prompt_tokens": 40, "completion_tokens": 10}


def completion(message: Any, **fields: Any) -> dict[str, Any]:
    """A chat completion holding `message`, with `fields` replacing its top-level ones."""
    body = {
        "id": "chatcmpl-odd",
        "object": "chat.completion",
        "created": 0,
        "model": "base-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
        "usage": TOKENS | {"total_tokens": 50},
    }
    return body | fields


def calling(function: Any) -> dict[str, Any]:
    """An assistant message with one tool call of `function`."""
    call = {"id": "call_1", "type": "function", "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


ODD_COMPLETIONS = {
    "arguments null": completion(calling({"name": TOOL, "arguments": None})),
    "arguments missing": completion(calling({"name": TOOL})),
    "arguments a number": completion(calling({"name": TOOL, "arguments": 7})),
    "arguments nested 100,000 deep": completion(
        calling({"name": TOOL, "arguments": "[" * 100_000 + "]" * 100_000})
    ),
    "function null": completion(calling(None)),
    "tool_calls not a list": completion({"role": "assistant", "tool_calls": TOOL}),
    "message null": completion(None),
    "choices null": completion(None, choices=None),
}


@pytest.mark.parametrize("body", ODD_COMPLETIONS.values(), ids=ODD_COMPLETIONS.keys())
async def test_a_completion_of_an_odd_shape_is_asked_again(body: dict[str, Any]) -> None:
    replies = [{"body": body}, {"arguments": VALID, "usage": TOKENS}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)
        requests = server.requests

    assert done.value == Plan(**VALID)
    assert done.attempts == 2  # a re-ask: the model answered, badly
    assert done.usage == Usage(calls=2, prompt_tokens=80, completion_tokens=20)
    assert "That answer could not be used" in requests[1].body["messages"][-1]["content"]


async def test_arguments_sent_as_an_object_rather_than_a_string_are_read() -> None:
    replies = [{"body": completion(calling({"name": TOOL, "arguments": VALID}))}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)


ODD_USAGE = {
    "null": {"prompt_tokens": None, "completion_tokens": 10},
    "negative": {"prompt_tokens": -(10**9), "completion_tokens": 10},
    "a string": {"prompt_tokens": "40", "completion_tokens": 10},
}


@pytest.mark.parametrize("usage", ODD_USAGE.values(), ids=ODD_USAGE.keys())
async def test_a_token_count_that_is_no_count_counts_as_none(usage: dict[str, Any]) -> None:
    # A bad count must neither fail a good answer nor take tokens off the run's usage.
    body = completion(calling({"name": TOOL, "arguments": json.dumps(VALID)}), usage=usage)
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": body}]}])) as s:
        done = await ask(s)

    assert done.value == Plan(**VALID)
    assert done.usage == Usage(calls=1, prompt_tokens=0, completion_tokens=10)


ODD_MODELS: dict[str, Any] = {"null": None, "a number": 7, "empty": ""}


@pytest.mark.parametrize("named", ODD_MODELS.values(), ids=ODD_MODELS.keys())
async def test_an_answer_naming_no_model_is_put_down_to_the_one_asked_for(named: Any) -> None:
    body = completion(calling({"name": TOOL, "arguments": json.dumps(VALID)}), model=named)
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": body}]}])) as s:
        done = await ask(s)

    assert (done.value, done.model) == (Plan(**VALID), "base-model")


NOT_COMPLETIONS: dict[str, dict[str, Any]] = {
    "an HTML page": {"raw_body": "<html>sign in</html>", "content_type": "text/html"},
    "a JSON list": {"body": [1, 2]},
    "a JSON string": {"body": "ok"},
    "JSON null": {"body": None},
    "cut-off JSON": {"raw_body": '{"id": "chatcmpl-1", "choi'},
    "JSON nested 100,000 deep": {"raw_body": '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"},
}


class CutInsideACharacter(ScriptedOpenAI):
    """The scripted server, with each `raw_body` reply cut just after the first byte of its
    first multi-byte UTF-8 character: a script's bodies are text, which cannot say such bytes.
    """

    def answer(self, method: str, path: str, raw: bytes) -> Answer:
        scripted = super().answer(method, path, raw)
        body = scripted.raw
        if body is None:
            return scripted
        first = next(index for index, byte in enumerate(body) if byte >= 0x80)
        return dataclasses.replace(scripted, raw=body[: first + 1])


# A good completion whose id has an "é" (two bytes in UTF-8): cut inside it, the body is no
# longer UTF-8, which the SDK's decoder refuses before it parses any JSON.
GOOD = completion(calling({"name": TOOL, "arguments": json.dumps(VALID)}), id="résumé")
RESUME = {"raw_body": json.dumps(GOOD, ensure_ascii=False)}


ENDPOINT_FAILURES: dict[str, tuple[type[ScriptedOpenAI], dict[str, Any]]] = {
    **{name: (ScriptedOpenAI, reply) for name, reply in NOT_COMPLETIONS.items()},
    "a body cut inside a character": (CutInsideACharacter, RESUME),
}


@pytest.mark.parametrize(
    ("server_type", "reply"), ENDPOINT_FAILURES.values(), ids=ENDPOINT_FAILURES.keys()
)
async def test_a_body_that_is_no_completion_is_an_endpoint_failure(
    server_type: type[ScriptedOpenAI], reply: dict[str, Any]
) -> None:
    replies = [reply, {"arguments": VALID, "usage": TOKENS}]
    async with server_type(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_retries=1)
        requests = server.requests

    assert done.value == Plan(**VALID)
    assert done.attempts == 1  # retried, not re-asked: the model never answered
    assert requests[1].body["messages"] == ASK
    assert done.usage == Usage(calls=1, prompt_tokens=40, completion_tokens=10)


async def test_an_endpoint_answering_no_completion_every_time_is_unavailable() -> None:
    replies = [NOT_COMPLETIONS["an HTML page"]]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=1)

    assert "failed 2 times; last: the answer is not a chat completion" in str(failure.value)
    assert "<html>sign in</html>" in str(failure.value)


async def test_a_body_cut_inside_a_character_every_time_is_unavailable_with_usage() -> None:
    # The first answer is paid for but does not fit; every answer to the re-ask is cut off:
    # the error a worker reports carries what the first one cost.
    replies = [{"arguments": {"title": "auth"}, "usage": TOKENS}, RESUME]
    async with CutInsideACharacter(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=2)
        requests = server.requests

    assert len(requests) == 4  # the first ask, then the re-ask and its two retries
    assert "failed 3 times; last: the answer is not JSON: 'utf-8' codec" in str(failure.value)
    assert failure.value.usage == Usage(calls=1, prompt_tokens=40, completion_tokens=10)
    assert failure.value.model == "base-model"


# OpenRouter and other gateways: once a provider fails after the status line went out, the
# error comes in the 200's body, at the top or in the choice.
OVERLOADED = {"message": "Upstream provider overloaded, try again", "code": 502}
ERRORS_IN_A_200 = {
    "at the top": {"error": OVERLOADED},
    "in the choice": completion(None, choices=[{"index": 0, "error": OVERLOADED}]),
    "as a string": {"error": "Upstream provider overloaded, try again"},
}


@pytest.mark.parametrize("body", ERRORS_IN_A_200.values(), ids=ERRORS_IN_A_200.keys())
async def test_an_error_in_a_200s_body_is_the_endpoint_failing_and_retried(
    body: dict[str, Any],
) -> None:
    # Taken for the model's bad answer before, it was re-asked ("(no answer)"), then given up
    # on for good as InvalidOutput, the task failed and the provider's words lost.
    replies = [{"body": body, "times": 2}, {"arguments": VALID, "usage": TOKENS}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_retries=2)
        requests = server.requests

    assert (done.value, done.attempts) == (Plan(**VALID), 1)  # retried, not re-asked
    assert [r.body["messages"] for r in requests] == [ASK] * 3


async def test_an_endpoint_reporting_errors_in_200s_is_unavailable_in_its_own_words() -> None:
    replies = [{"body": ERRORS_IN_A_200["at the top"]}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=1)

    assert str(failure.value).endswith(
        "failed 2 times; last: the endpoint answered with an error: "
        "Upstream provider overloaded, try again (code 502)"
    )
    assert failure.value.usage == Usage()  # no answer came, none is counted


async def test_a_null_error_beside_a_good_answer_is_no_error() -> None:
    body = completion(calling({"name": TOOL, "arguments": json.dumps(VALID)}), error=None)
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": body}]}])) as s:
        done = await ask(s)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)
