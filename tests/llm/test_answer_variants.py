"""Answers that are not one plain call of the function, as real endpoints send them, over real
HTTP: a call whose `type` is left out, several calls, a refusal, an answer cut off at the token
limit. Each is read for what it is, and a re-ask tells the model what went wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from codeyard.llm import InvalidOutput
from codeyard.schemas import Usage
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import TOOL, VALID, Plan, ask


def answer(message: dict[str, Any], finish_reason: str = "tool_calls") -> dict[str, Any]:
    """A chat completion holding `message`."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "base-model",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
    }


def calling(*arguments: dict[str, Any] | str, **call: Any) -> dict[str, Any]:
    """An assistant message calling the function once per `arguments` (a string as sent),
    each call with `call`'s fields (`type` "function" unless given)."""
    calls = [
        {
            "id": f"call_{number}",
            "type": "function",
            "function": {"name": TOOL, "arguments": a if isinstance(a, str) else json.dumps(a)},
        }
        | call
        for number, a in enumerate(arguments)
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def the_reask(server: ScriptedOpenAI) -> str:
    """What the second request told the model was wrong with its first answer."""
    content: str = server.requests[1].body["messages"][-1]["content"]
    return content


@pytest.mark.parametrize("kind", ["missing", "null"])
async def test_a_call_without_a_type_is_read_as_a_function_call(kind: str) -> None:
    # Some vLLM and Ollama builds send no `type`, or null: every such answer was taken for
    # text ("you answered with text"), re-asked, and the work given up.
    message = calling(VALID, type=None)
    if kind == "missing":
        del message["tool_calls"][0]["type"]
    async with ScriptedOpenAI(
        parse_script([{"tool": TOOL, "replies": [{"body": answer(message)}]}])
    ) as s:
        done = await ask(s)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)


async def test_several_calls_are_asked_again_as_one_never_one_kept_silently() -> None:
    # The first was kept and the rest dropped: a coder's edits split over two calls lost the
    # second half. What joining them would mean depends on the schema, so the model is asked.
    first, second = {"title": "auth", "steps": ["a"]}, {"title": "auth", "steps": ["b"]}
    replies = [{"body": answer(calling(first, second))}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)
        shown = server.requests[1].body["messages"][-2]["content"]

    assert (done.value, done.attempts) == (Plan(**VALID), 2)
    assert the_reask(server).startswith(
        f"That answer could not be used: you called the function `{TOOL}` 2 times in one "
        f"answer, but only one call of `{TOOL}` can be read: call it once, with the whole "
        "answer in that one call"
    )
    assert shown == f"{json.dumps(first)}\n{json.dumps(second)}"  # both shown back


async def test_the_same_call_sent_twice_is_one_answer() -> None:
    replies = [{"body": answer(calling(VALID, VALID))}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)


async def test_a_refusal_is_said_in_the_reask_and_the_error() -> None:
    # Its text was dropped, and the model told it "answered with text".
    refusal = "I can't help with that request."
    message = {"role": "assistant", "content": None, "refusal": refusal}
    replies = [{"body": answer(message, finish_reason="stop")}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(InvalidOutput) as failure:
            await ask(server, max_reasks=1)

    said = f"you declined to call the function `{TOOL}`: {refusal}"
    assert the_reask(server).startswith(f"That answer could not be used: {said}\n")
    assert str(failure.value).endswith(f"last problem: {said}")


CUT_OFF = answer(calling(json.dumps(VALID)[:20]), finish_reason="length")


async def test_an_answer_cut_off_at_the_token_limit_is_asked_again_shorter() -> None:
    # It was re-asked as "not JSON: Unterminated string", which the model could not act on.
    replies = [{"body": CUT_OFF}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_tokens=1024)

    assert (done.value, done.attempts) == (Plan(**VALID), 2)
    assert the_reask(server).startswith(
        "That answer could not be used: your answer was cut off at the token limit (1024 "
        f"tokens) before it ended, so the arguments of `{TOOL}` are not JSON: Unterminated "
        "string starting at: line 1 column 19 (char 18). Answer more briefly: the whole call "
        f"of `{TOOL}` must fit in the limit\n"
    )


async def test_answers_cut_off_twice_are_not_asked_for_a_third_time() -> None:
    # Each re-ask costs the whole, growing prompt: with the same cap, a model that did not
    # answer shorter when told to will not on the third try either.
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": CUT_OFF}]}])) as s:
        with pytest.raises(InvalidOutput) as failure:
            await ask(s, max_tokens=1024, max_reasks=5)
        requests = s.requests

    assert len(requests) == 2
    assert failure.value.usage == Usage(calls=2, prompt_tokens=80, completion_tokens=20)
    assert str(failure.value).startswith(
        f"planner: no valid `{TOOL}` call: 2 answers were cut off at the token limit "
        "(CODEYARD_LLM_MAX_TOKENS=1024), the last after the model was told to answer shorter; "
        "last problem: your answer was cut off"
    )


async def test_a_complete_answer_at_the_token_limit_is_taken() -> None:
    # "length" with arguments that happen to be whole: nothing is missing.
    replies = [{"body": answer(calling(VALID), finish_reason="length")}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)


async def test_an_answer_a_content_filter_stopped_says_so() -> None:
    # Azure OpenAI's filter ends an answer with finish_reason "content_filter" and whatever
    # was written: the failure said only "had no arguments", the reason nowhere.
    stopped = answer({"role": "assistant", "content": None}, finish_reason="content_filter")
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": stopped}]}])) as s:
        with pytest.raises(InvalidOutput) as failure:
            await ask(s, max_reasks=1)

    said = (
        "the endpoint's content filter stopped your answer before it ended, so you answered "
        f"with text instead of calling the function `{TOOL}`"
    )
    assert str(failure.value).endswith(f"last problem: {said}")


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ({"role": "assistant", "content": "I think \ud83d the plan is"}, "I think ? the plan"),
        (calling('{"title": "a\ud83d", "steps": ["x"]}'), '"title": "a?"'),
    ],
    ids=["text", "arguments"],
)
async def test_a_lone_surrogate_in_an_answer_is_re_asked_in_text_that_can_be_sent(
    message: dict[str, Any], shown: str
) -> None:
    """A `\\ud83d` escape without its pair decodes to a lone surrogate, which UTF-8 cannot
    encode: shown back in the re-ask, it made the next request fail to encode, an error that
    no retry mends (the work failed after its deliveries)."""
    body = json.dumps(answer(message))  # (json.dumps writes the surrogate as its escape)
    assert "\\ud83d" in body
    replies = [{"raw_body": body}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        completion = await ask(server)
        reask = server.requests[1].body["messages"]

    assert completion.value == Plan(**VALID)
    assert completion.attempts == 2
    assert shown in reask[-2]["content"]  # the answer shown back, the surrogate as "?"


@pytest.mark.parametrize("empty", [{}, "", False, None])
async def test_an_answer_with_an_empty_error_field_is_an_answer(empty: Any) -> None:
    """Some gateways send `"error": {}` (or "", false) beside a good answer; it was taken for a
    failure, retried, and the answer paid for was thrown away."""
    body = answer(calling(VALID)) | {"error": empty}
    body["choices"][0]["error"] = empty
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"body": body}]}])) as srv:
        completion = await ask(srv, max_retries=0)
        asked = len(srv.requests)

    assert completion.value == Plan(**VALID)
    assert asked == 1
