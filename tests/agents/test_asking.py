"""What an agent sends back when it asks its model again (`told_again`): the answer it could
not use and why, both bounded as the LLM client bounds its own re-asks. Real HTTP to the
scripted LLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeyard.agents import asking
from codeyard.agents.asking import ask_model, told_again
from codeyard.agents.coder import Coder
from codeyard.agents.outputs import CodeOutput
from codeyard.bus import GiveUp, RetryLater
from codeyard.llm import ChatMessage, OpenAIClient
from codeyard.llm.tool_call import SHOWN_HEAD_CHARS, SHOWN_TAIL_CHARS
from codeyard.schemas import CodeRequest, RepoRef, TaskSpec, Usage
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK as PLAN_ASK
from tests.llm.scenario import DESCRIPTION, TOOL, VALID, Plan, settings
from tests.repositories import one_commit_repo

ASK: list[ChatMessage] = [{"role": "user", "content": "Write data.txt"}]

# A re-ask's own weight, beyond the question: the shown answer, a line saying it was
# shortened, and the problem, each bounded.
REASK_CHARS = 3 * (SHOWN_HEAD_CHARS + SHOWN_TAIL_CHARS)


async def test_a_coder_answer_over_the_file_limit_is_not_sent_back_whole(tmp_path: Path) -> None:
    # The refused answer went back in full with each re-ask: 1.1 and then 2.2 million
    # characters of prompt, each paid for, for an answer that could never apply.
    write = {"kind": "write", "path": "data.txt", "content": "x" * 1_100_000}
    answer = {"summary": "s", "edits": [write]}
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    task = TaskSpec(id="t1", title="data", description="d", files=["data.txt"])
    request = CodeRequest(
        run_id="r1", task_id="t1", attempt=1, goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    rules = parse_script([{"tool": "submit_edits", "replies": [{"arguments": answer}]}])
    async with ScriptedOpenAI(rules) as server, OpenAIClient(settings(server.base_url)) as client:
        with pytest.raises(GiveUp, match="over the limit"):
            await Coder(client)(request)
        first, *reasks = [len(json.dumps(r.body["messages"])) for r in server.requests]

    assert len(reasks) == 2
    assert reasks[0] < first + REASK_CHARS
    assert reasks[1] < first + 2 * REASK_CHARS


def test_a_long_answer_is_shown_by_its_start_and_end_and_the_model_told_so() -> None:
    answer = CodeOutput(summary="s", edits=[{"kind": "write", "path": "a", "content": "x" * 9000}])
    whole = answer.model_dump_json()

    *asked, shown, told = told_again(ASK, answer, "Edits refused: too large")

    assert asked == ASK
    assert shown["role"] == "assistant"
    assert shown["content"].startswith(whole[:SHOWN_HEAD_CHARS])
    assert shown["content"].endswith(whole[-SHOWN_TAIL_CHARS:])
    assert "characters cut ...]" in shown["content"]
    assert told["content"] == (
        f"(Your answer was {len(whole)} characters long; only its start and its end are shown "
        "above.)\nEdits refused: too large\nAnswer again, correcting this."
    )


def test_a_short_answer_goes_back_whole() -> None:
    answer = CodeOutput(summary="s", edits=[{"kind": "write", "path": "a", "content": "x"}])

    *_, shown, told = told_again(ASK, answer, "The plan is invalid: a cycle")

    assert shown["content"] == answer.model_dump_json()
    assert told["content"] == "The plan is invalid: a cycle\nAnswer again, correcting this."


def test_a_long_problem_is_shortened_too() -> None:
    answer = CodeOutput(summary="s", edits=[{"kind": "write", "path": "a", "content": "x"}])

    *_, told = told_again(ASK, answer, "Edits refused: " + "no such path; " * 10_000)

    assert len(told["content"]) < SHOWN_HEAD_CHARS + SHOWN_TAIL_CHARS + 200


async def test_a_model_away_for_a_while_is_waited_out_in_the_same_delivery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Handed back at each LLMUnavailable, the work used one of its 5 deliveries per half
    minute of outage, and its run failed after about two and a half minutes of 503s."""
    monkeypatch.setattr(asking, "FIRST_OUTAGE_PAUSE", 0.01)
    tokens = {"prompt_tokens": 100, "completion_tokens": 20}
    replies = [{"status": 503}, {"status": 429}, {"arguments": VALID, "usage": tokens}]
    async with (
        ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server,
        OpenAIClient(
            settings(server.base_url, max_retries=0, outage_patience_seconds=60)
        ) as client,
    ):
        completion = await ask_model(
            client, "planner", PLAN_ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
        )
        asked = len(server.requests)

    assert completion.value == Plan(**VALID)
    assert completion.usage == Usage(calls=1, prompt_tokens=100, completion_tokens=20)
    assert asked == 3  # (the client's own retries are off here: each failure is one request)
    assert caplog.text.count("planner: the model is unavailable") == 2


async def test_a_model_away_longer_than_the_patience_hands_the_work_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asking, "FIRST_OUTAGE_PAUSE", 0.05)
    async with (
        ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": [{"status": 503}]}])) as server,
        OpenAIClient(
            settings(server.base_url, max_retries=0, outage_patience_seconds=0.3)
        ) as client,
    ):
        with pytest.raises(RetryLater, match="the model is unavailable") as retry:
            await ask_model(
                client, "planner", PLAN_ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
            )
        asked = len(server.requests)

    assert retry.value.delay == 30.0
    assert 2 <= asked < 10  # asked again at growing pauses, then handed back
