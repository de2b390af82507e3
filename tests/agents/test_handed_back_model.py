"""Work a role hands back (given up, to retry, waiting for a person) names the model that
answered before, as its results do when it succeeds: the tokens it spent count for its role in
the report, and so should the model that spent them. Each role runs in a real `PullWorker` on
a real NATS server, asking the scripted LLM over real HTTP, the tester before the real safety
gate; what is read back is what the coordinator would read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from codeyard.agents import tester as testing_role  # not `Tester`: pytest would collect it
from codeyard.agents.coder import EDIT_ANSWERS, Coder
from codeyard.agents.planner import PLAN_ANSWERS, Planner
from codeyard.agents.policy import load_policy
from codeyard.agents.reviewer import Reviewer
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus, PullWorker, RetryLater
from codeyard.bus.gate_client import BusGateClient
from codeyard.bus.subjects import work_subject
from codeyard.bus.worker import Handler
from codeyard.llm import OpenAIClient
from codeyard.sandbox import BwrapSandbox, Limits
from codeyard.schemas import (
    ApprovalNeeded,
    CodeRequest,
    Patch,
    PlanRequest,
    RepoRef,
    Result,
    ReviewRequest,
    TaskSpec,
    Usage,
    WorkFailed,
    WorkItem,
    WorkRetried,
)
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.agents.plans import plan
from tests.agents.test_retry_usage import work_for_the_tester
from tests.bus.results import collect_results
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo

DATED = "gpt-4o-mini-2024-07-18"  # the model the answers name (`settings` asks for another)
TOKENS = {"prompt_tokens": 100, "completion_tokens": 20}
TASK = TaskSpec(id="t1", title="greet", description="greet", files=["app.py"])
NOWHERE = {"kind": "replace", "path": "app.py", "search": "not in the file", "replace": "x"}
REFUSED_EDITS = {"summary": "edit", "edits": [NOWHERE]}  # never applies


@asynccontextmanager
async def serving(bus: Bus, role: str, handler: Handler) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(PullWorker(bus, role, handler).run(stop, grace=5))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def handed_back(bus: Bus, role: str, handler: Handler, item: WorkItem) -> Result:
    """What the worker of `role` answers `item` with first."""
    await bus.publish(work_subject(role), item)
    async with serving(bus, role, handler):
        [result] = await collect_results(bus, 1)
    return result


def code_request(tmp_path: Path) -> CodeRequest:
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    return CodeRequest(
        run_id="r1", task_id="t1", attempt=1, goal="greet", task=TASK, repo=RepoRef(path=str(repo))
    )


def answer(arguments: dict[str, Any], model: str = DATED) -> dict[str, Any]:
    return {"arguments": arguments, "usage": TOKENS, "model": model}


def spent(calls: int) -> Usage:
    return Usage(calls=calls, prompt_tokens=100 * calls, completion_tokens=20 * calls)


async def test_a_coder_giving_up_on_edits_that_never_apply_names_the_model(
    bus: Bus, tmp_path: Path
) -> None:
    script = [{"tool": "submit_edits", "replies": [answer(REFUSED_EDITS)]}]
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        result = await handed_back(bus, "coder", Coder(client), code_request(tmp_path))

    assert isinstance(result, WorkFailed)
    assert "no edits that apply" in result.reason
    assert (result.usage, result.model) == (spent(EDIT_ANSWERS), DATED)


async def test_a_coder_whose_model_goes_away_on_its_second_call_names_the_first_ones(
    bus: Bus, tmp_path: Path
) -> None:
    # The first answer is paid for but does not apply; asked again, the endpoint fails before
    # answering: the model to name is the one that gave the answer paid for.
    replies = [answer(REFUSED_EDITS), {"status": 503}]
    script = [{"tool": "submit_edits", "replies": replies}]
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url, max_retries=0)) as client,
    ):
        result = await handed_back(bus, "coder", Coder(client), code_request(tmp_path))

    assert isinstance(result, WorkRetried)
    assert "the model is unavailable" in result.reason
    assert (result.delivery, result.usage, result.model) == (1, spent(1), DATED)


async def test_a_model_unavailable_from_the_first_call_is_not_named(tmp_path: Path) -> None:
    script = [{"tool": "submit_edits", "replies": [{"status": 503}]}]
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url, max_retries=0)) as client,
    ):
        with pytest.raises(RetryLater) as retry:
            await Coder(client)(code_request(tmp_path))

    # nothing answered, nothing spent (the worker does not even send a WorkRetried for it)
    assert (retry.value.usage, retry.value.model) == (Usage(), "")


async def test_a_reviewer_whose_answers_never_fit_names_the_model(bus: Bus) -> None:
    # Requesting changes without a comment is refused by the schema, every time: the LLM
    # client gives up with InvalidOutput, which names the model of those answers.
    rejecting = answer({"comments": [], "approved": False})
    script = [{"tool": "submit_review", "replies": [rejecting]}]
    request = ReviewRequest(run_id="r1", task_id="t1", attempt=1, task=TASK, patch=Patch(text="+x"))
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url, max_reasks=1)) as client,
    ):
        result = await handed_back(bus, "review", Reviewer(client), request)

    assert isinstance(result, WorkFailed)
    assert "the model could not answer" in result.reason
    assert (result.usage, result.model) == (spent(2), DATED)


async def test_a_planner_giving_up_on_plans_that_never_hold_names_the_model(bus: Bus) -> None:
    cycle = plan(("a", ["b"]), ("b", ["a"])).model_dump()
    script = [{"tool": "submit_plan", "replies": [answer(cycle)]}]
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        result = await handed_back(
            bus, "planner", Planner(client), PlanRequest(run_id="r1", goal="greet")
        )

    assert isinstance(result, WorkFailed)
    assert "no valid plan" in result.reason
    assert (result.usage, result.model) == (spent(PLAN_ANSWERS), DATED)


async def test_a_tester_whose_command_waits_for_a_person_names_the_model(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    # The default policy sends a command it does not know to a person; the tester asked the
    # model for tests before.
    script = [{"tool": "submit_tests", "replies": [answer({"rationale": "ok", "edits": []})]}]
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    request = work_for_the_tester(repo, "make integration-test")
    gate = await SafetyGate(bus, load_policy(None)).serve()
    try:
        async with (
            ScriptedOpenAI(parse_script(script)) as server,
            OpenAIClient(settings(server.base_url)) as client,
        ):
            role = testing_role.Tester(client, bwrap_sandbox, BusGateClient(bus), Limits())
            result = await handed_back(bus, "tester", role, request)
    finally:
        await gate.unsubscribe()

    assert isinstance(result, ApprovalNeeded)
    assert (result.action, result.detail) == ("run_command", "make integration-test")
    assert (result.usage, result.model) == (spent(1), DATED)
