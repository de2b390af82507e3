"""Each request of the real `OpenAIClient` to the scripted server is counted by outcome and
timed; the tokens the endpoint reports are counted by kind."""

from __future__ import annotations

from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import TOOL, VALID, ask
from tests.observability.samples import Delta

MODEL = "metrics-model"  # a model of its own: no other test moves its series


async def test_calls_tokens_and_latency_by_role_and_model() -> None:
    replies = [
        {"status": 500},
        {
            "arguments": {"title": "no steps"},
            "usage": {"prompt_tokens": 100, "completion_tokens": 7},
        },
        {"arguments": VALID, "usage": {"prompt_tokens": 120, "completion_tokens": 30}},
    ]
    labels = {"role": "coder", "model": MODEL}
    delta = Delta(
        ("codeyard_llm_calls_total", labels | {"outcome": "ok"}),
        ("codeyard_llm_calls_total", labels | {"outcome": "http_error"}),
        ("codeyard_llm_tokens_total", labels | {"kind": "prompt"}),
        ("codeyard_llm_tokens_total", labels | {"kind": "completion"}),
        ("codeyard_llm_invalid_answers_total", labels),
        ("codeyard_llm_call_duration_seconds_count", labels),
    )
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, "coder", model=MODEL, max_retries=2)

    assert done.attempts == 2
    assert delta("codeyard_llm_calls_total", **labels, outcome="ok") == 2
    assert delta("codeyard_llm_calls_total", **labels, outcome="http_error") == 1
    assert delta("codeyard_llm_tokens_total", **labels, kind="prompt") == 220
    assert delta("codeyard_llm_tokens_total", **labels, kind="completion") == 37
    assert delta("codeyard_llm_invalid_answers_total", **labels) == 1
    assert delta("codeyard_llm_call_duration_seconds_count", **labels) == 3
