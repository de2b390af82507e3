"""Answers far longer than they should be, over real HTTP: a re-ask shows the model a bounded
part of its answer, and arguments longer than any model writes are refused before reading."""

from __future__ import annotations

import json
from typing import Any

import pytest

from codeyard.llm import InvalidOutput
from codeyard.llm.tool_call import MAX_ARGUMENTS_CHARS
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, TOOL, VALID, Plan, ask

MIB = 1 << 20

# What a re-ask may weigh, all of its messages together: the question, a few KB of the answer
# and what is wrong with it. Whole, the answers below are a MiB each.
SMALL_REQUEST = 16_000

LONG_TITLE = "x" * MIB

LONG_ANSWERS = {
    # valid JSON, but no steps: the answer's end is where the mistake is
    "invalid arguments": {"raw_arguments": json.dumps({"title": LONG_TITLE, "steps": []})},
    "text instead of a call": {"text": LONG_TITLE},
    # the problem itself quotes the answer: "you called `xxx...`"
    "a call of a function named at length": {"arguments": VALID, "call": LONG_TITLE},
}


def request_size(body: Any) -> int:
    return len(json.dumps(body["messages"]))


@pytest.mark.parametrize("reply", LONG_ANSWERS.values(), ids=LONG_ANSWERS.keys())
async def test_a_long_unusable_answer_is_shown_shortened_in_the_reask(
    reply: dict[str, Any],
) -> None:
    replies = [reply, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)
        _, reask = server.requests

    assert (done.value, done.attempts) == (Plan(**VALID), 2)
    assert request_size(reask.body) < SMALL_REQUEST
    assert reask.body["messages"][:2] == ASK
    assert "characters cut ...]" in json.dumps(reask.body["messages"][2:])


async def test_the_shortened_answer_keeps_its_start_and_its_end_and_says_so() -> None:
    answer = json.dumps({"title": LONG_TITLE, "steps": []})
    replies = [{"raw_arguments": answer}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        await ask(server)
        *_, shown, complaint = server.requests[1].body["messages"]

    assert shown["content"].startswith('{"title": "xxx')
    assert shown["content"].endswith('xxx", "steps": []}')  # where the mistake is
    assert complaint["content"].startswith(
        f"(Your answer was {len(answer)} characters long; only its start and its end are "
        "shown above.)\nThat answer could not be used: "
    )
    assert "- steps: List should have at least 1 item" in complaint["content"]


async def test_a_short_answer_is_shown_whole_without_a_note() -> None:
    replies = [{"raw_arguments": '{"title": "auth"}'}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        await ask(server)
        *_, shown, complaint = server.requests[1].body["messages"]

    assert shown == {"role": "assistant", "content": '{"title": "auth"}'}
    assert complaint["content"].startswith("That answer could not be used: ")


async def test_a_problem_quoting_a_long_answer_is_kept_short_as_the_last_error() -> None:
    replies = [LONG_ANSWERS["a call of a function named at length"]]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(InvalidOutput) as failure:
            await ask(server, max_reasks=0)

    assert failure.value.last_error.startswith("you called `xxx")
    assert len(failure.value.last_error) < SMALL_REQUEST
    assert len(str(failure.value)) < SMALL_REQUEST


async def test_arguments_longer_than_any_model_writes_are_refused_unread() -> None:
    # valid but for their length, which no schema here caps: without the bound they would do
    too_long = {"title": "x" * MAX_ARGUMENTS_CHARS, "steps": ["one"]}
    replies = [{"arguments": too_long}, {"arguments": VALID}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server)
        reask = server.requests[1].body

    assert (done.value, done.attempts) == (Plan(**VALID), 2)  # re-asked, like any bad answer
    length = len(json.dumps(too_long))
    assert (
        f"the arguments of `{TOOL}` are {length} characters long, more than the "
        f"{MAX_ARGUMENTS_CHARS} an answer may have"
    ) in reask["messages"][-1]["content"]
    assert request_size(reask) < SMALL_REQUEST
