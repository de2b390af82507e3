"""Structured output through a forced tool call, against the scripted server over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from codeyard.llm import InvalidOutput, OpenAIClient
from codeyard.llm.tool_call import DESCRIBED_PROBLEMS, describe
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, VALID, Plan, ask, settings


class Note(BaseModel):
    text: str = Field(max_length=10, description="the note")
    tags: list[str] = Field(default_factory=list)


async def test_round_trip_asks_by_forced_tool_call() -> None:
    script = [{"tool": TOOL, "replies": [{"arguments": VALID, "usage": tokens(120, 30)}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)
        [request] = server.requests

    assert done.value == Plan(title="auth", steps=["add middleware", "add tests"])
    assert done.attempts == 1
    assert done.model == "base-model"
    assert (done.usage.calls, done.usage.prompt_tokens, done.usage.completion_tokens) == (
        1,
        120,
        30,
    )
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    body = request.body
    assert body["messages"] == ASK
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": TOOL,
                "description": DESCRIPTION,
                "parameters": Plan.model_json_schema(),
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": TOOL}}
    assert "response_format" not in body


async def test_invalid_answer_is_reasked_with_the_validation_error() -> None:
    script = [{"tool": TOOL, "replies": [{"arguments": {"title": "auth"}}, {"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)
        first, second = server.requests

    assert done.value.steps == VALID["steps"]
    assert done.attempts == 2
    assert done.usage.calls == 2
    assert first.body["messages"] == ASK
    *history, answer, reask = second.body["messages"]
    assert history == ASK
    assert answer == {"role": "assistant", "content": '{"title": "auth"}'}
    assert reask["role"] == "user"
    assert "- steps: Field required" in reask["content"]
    assert f"Call the function `{TOOL}` again" in reask["content"]


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ({"text": "Sure! Here is a plan."}, f"instead of calling the function `{TOOL}`"),
        ({"raw_arguments": '{"title": "auth", "steps": ['}, "not JSON: Expecting value"),
        ({"arguments": VALID, "call": "other_tool"}, "you called `other_tool`"),
        ({"arguments": {"title": "auth", "steps": []}}, "- steps: List should have at least 1"),
    ],
)
async def test_each_kind_of_bad_answer_is_named_in_the_reask(
    reply: dict[str, object], problem: str
) -> None:
    script = [{"tool": TOOL, "replies": [reply, {"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)
        reask = server.requests[1].body["messages"][-1]["content"]

    assert done.attempts == 2
    assert problem in reask


async def test_text_that_is_not_json_is_reasked_with_where_it_breaks() -> None:
    # a raw newline (read leniently, see below) and then a missing comma: strict JSON would
    # complain about the newline, which is not what needs fixing
    raw = '{"title": "two\nlines" "steps": ["one"]}'
    script = [{"tool": TOOL, "replies": [{"raw_arguments": raw}, {"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)
        *_, answer, reask = server.requests[1].body["messages"]

    assert done.attempts == 2
    assert answer == {"role": "assistant", "content": raw}
    assert reask["content"].startswith(
        f"That answer could not be used: the arguments of `{TOOL}` are not JSON: "
        "Expecting ',' delimiter: line 2 column 8 (char 22)\n"
    )
    assert "control character" not in reask["content"]


async def test_json_of_the_wrong_shape_is_reasked_with_the_validation_error() -> None:
    # raw tabs inside strings are read leniently: what is wrong is the shape, and it is said
    raw = '{"title": "a\tb", "steps": "one"}'
    script = [{"tool": TOOL, "replies": [{"raw_arguments": raw}, {"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)
        reask = server.requests[1].body["messages"][-1]["content"]

    assert done.attempts == 2
    assert f"`{TOOL}` are invalid:\n- steps: Input should be a valid array" in reask
    assert "control character" not in reask


async def test_gives_up_after_max_reasks_with_the_last_error() -> None:
    script = [{"tool": TOOL, "replies": [{"arguments": {"steps": ["x"]}}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        with pytest.raises(InvalidOutput) as failure:
            await ask(server, "coder", max_reasks=2)
        requests = server.requests

    assert len(requests) == 3  # the first ask and two re-asks
    assert failure.value.last_error == (
        f"the arguments of `{TOOL}` are invalid:\n- title: Field required"
    )
    assert "in 3 answers" in str(failure.value)
    assert failure.value.usage.calls == 3
    assert failure.value.model == "base-model"  # the answers named none: the one asked for
    # Every re-ask carries the whole conversation so far: ask + (answer, complaint) per re-ask.
    assert [len(r.body["messages"]) for r in requests] == [2, 4, 6]


async def test_model_and_temperature_are_chosen_per_role() -> None:
    per_role: dict[str, Any] = {
        "temperature": 0.1,
        "model_coder": "coder-model",
        "temperature_coder": 0.7,
        "model_review": "review-model",
    }
    roles = ("coder", "planner", "review", "review.security", "tester")
    script = [{"tool": TOOL, "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        answered_by = [(await ask(server, role, **per_role)).model for role in roles]
        sent = [(r.body["model"], r.body["temperature"]) for r in server.requests]

    assert sent == [
        ("coder-model", 0.7),
        ("base-model", 0.1),
        ("review-model", 0.1),
        ("review-model", 0.1),
        ("base-model", 0.1),
    ]
    assert answered_by == [model for model, _ in sent]
    assert answered_by == [settings("", **per_role).for_role(role).model for role in roles]


async def test_cost_comes_from_the_prices_over_every_answer() -> None:
    replies = [
        {"arguments": {"title": "auth"}, "usage": tokens(1_000, 500)},
        {"arguments": VALID, "usage": tokens(3_000, 250)},
    ]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, input_price_per_mtok=2.5, output_price_per_mtok=10.0)

    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4_000, 750)
    assert done.usage.cost_usd == pytest.approx((4_000 * 2.5 + 750 * 10.0) / 1_000_000)


async def test_a_role_asking_another_model_is_charged_that_models_prices() -> None:
    script = [{"tool": TOOL, "replies": [{"arguments": VALID, "usage": tokens(1_000, 500)}]}]
    prices: dict[str, Any] = {
        "model_coder": "big-model",
        "prices": "big-model=10/40, other=1/1",
        "input_price_per_mtok": 0.5,
        "output_price_per_mtok": 2.0,
    }
    async with ScriptedOpenAI(parse_script(script)) as server:
        coder = await ask(server, "coder", **prices)
        planner = await ask(server, "planner", **prices)  # base-model: the default prices

    assert coder.usage.cost_usd == pytest.approx((1_000 * 10 + 500 * 40) / 1_000_000)
    assert planner.usage.cost_usd == pytest.approx((1_000 * 0.5 + 500 * 2.0) / 1_000_000)


async def test_a_response_without_usage_still_counts_as_a_call() -> None:
    script = [{"tool": TOOL, "replies": [{"arguments": VALID, "omit_usage": True}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server, input_price_per_mtok=5.0)

    assert done.usage.calls == 1
    assert done.usage.total_tokens == 0
    assert done.usage.cost_usd == 0.0


def tokens(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


async def test_max_tokens_caps_an_answer_only_when_set_and_is_left_out_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not even as null: OpenAI's reasoning models refuse a request carrying `max_tokens`.
    monkeypatch.delenv("CODEYARD_LLM_MAX_TOKENS_FIELD", raising=False)
    script = [{"tool": TOOL, "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        await ask(server, max_tokens=512)
        await ask(server)
        capped, endpoint_default = (request.body for request in server.requests)

    assert capped["max_tokens"] == 512
    assert "max_completion_tokens" not in capped
    assert "max_tokens" not in endpoint_default
    assert "max_completion_tokens" not in endpoint_default


async def test_max_tokens_field_sends_the_cap_as_max_completion_tokens_instead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OpenAI's newer models refuse `max_tokens` (HTTP 400) and take the cap only under this name.
    monkeypatch.setenv("CODEYARD_LLM_MAX_TOKENS_FIELD", "max_completion_tokens")
    monkeypatch.setenv("CODEYARD_LLM_MAX_TOKENS", "512")
    script = [{"tool": TOOL, "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        await ask(server)
        monkeypatch.delenv("CODEYARD_LLM_MAX_TOKENS")
        await ask(server)
        capped, endpoint_default = (request.body for request in server.requests)

    assert capped["max_completion_tokens"] == 512
    assert "max_tokens" not in capped
    assert "max_completion_tokens" not in endpoint_default
    assert "max_tokens" not in endpoint_default


async def test_a_temperature_set_empty_is_left_out_of_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OpenAI's reasoning models refuse any temperature but their own default.
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_REVIEW", "0.7")
    script = [{"tool": TOOL, "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        for role in ("planner", "review"):
            await ask(server, role)
        sent = [request.body.get("temperature", "left out") for request in server.requests]

    assert sent == ["left out", 0.7]


async def test_a_role_whose_temperature_is_set_empty_sends_none_and_the_others_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "0.5")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_CODER", "")
    script = [{"tool": TOOL, "replies": [{"arguments": VALID}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        for role in ("coder", "planner"):
            await ask(server, role)
        sent = [request.body.get("temperature", "left out") for request in server.requests]

    assert sent == ["left out", 0.5]


async def test_a_length_cap_is_said_not_put_in_the_schema_and_still_holds() -> None:
    # llama.cpp's server dies on a grammar for maxLength 20000 (see tool_parameters)
    too_long = {"text": "x" * 11}
    script = [{"tool": TOOL, "replies": [{"arguments": too_long}, {"arguments": {"text": "ok"}}]}]
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        done = await client.structured(
            "planner", ASK, Note, tool_name=TOOL, tool_description=DESCRIPTION
        )
        first, second = server.requests

    parameters = first.body["tools"][0]["function"]["parameters"]
    assert parameters["properties"]["text"] == {
        "description": "the note (at most 10 characters)",
        "title": "Text",
        "type": "string",
    }
    assert "maxLength" not in str(parameters)
    assert done.value == Note(text="ok")
    reask = second.body["messages"][-1]["content"]
    assert "- text: String should have at most 10 characters" in reask


async def test_raw_newlines_inside_strings_are_read_as_escaped() -> None:
    # what llama.cpp's tool-call grammar lets a model write: a real newline inside a string
    raw = '{"title": "two\n\tlines", "steps": ["one"]}'
    script = [{"tool": TOOL, "replies": [{"raw_arguments": raw}]}]
    async with ScriptedOpenAI(parse_script(script)) as server:
        done = await ask(server)

    assert done.value == Plan(title="two\n\tlines", steps=["one"])
    assert done.attempts == 1  # no re-ask


async def test_answers_that_never_fit_name_the_model_that_gave_them() -> None:
    # Endpoints often name a dated version of the model asked for: the last answer's counts.
    replies = [
        {"arguments": {"steps": ["x"]}, "model": "gpt-4o-2024-05-13"},
        {"arguments": {"steps": ["x"]}, "model": "gpt-4o-2024-08-06"},
    ]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(InvalidOutput) as failure:
            await ask(server, max_reasks=1)

    assert (failure.value.usage.calls, failure.value.model) == (2, "gpt-4o-2024-08-06")


def test_only_the_first_problems_of_an_answer_are_described() -> None:
    """A model is re-asked with them, and an error quotes them: the rest is a count."""
    with pytest.raises(ValidationError) as refused:
        Plan.model_validate({"title": 7, "steps": [1] * 50})
    described = describe(refused.value).splitlines()
    assert len(described) == DESCRIBED_PROBLEMS + 1
    assert described[0] == "- title: Input should be a valid string"
    assert described[-1] == f"- and {51 - DESCRIBED_PROBLEMS} more problems"
