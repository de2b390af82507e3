"""Each built-in role's result names the model that answered it, as the endpoint named it in its
answer (a dated version, often, of the model asked for), so the run's report can say which
model did the work. Real HTTP to the scripted LLM, real repositories, the real gate and
sandbox for the tester."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codeyard.agents import tester as testing_role  # not `Tester`: pytest would collect it
from codeyard.agents.coder import Coder
from codeyard.agents.planner import Planner
from codeyard.agents.policy import load_policy
from codeyard.agents.reviewer import Reviewer
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.llm import OpenAIClient
from codeyard.sandbox import BwrapSandbox, Limits
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    Patch,
    PlanRequest,
    PlanResult,
    RepoRef,
    ResultMessage,
    ReviewRequest,
    ReviewResult,
    TaskSpec,
    TestRequest,
    TestResult,
    decode,
    encode,
)
from codeyard.schemas.model import SHORT_TEXT_CHARS
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from codeyard.testing.scripted_worker import new_file_patch
from tests.agents.plans import plan
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo

ASKED = "base-model"  # what `settings` configures
DATED = "gpt-4o-mini-2024-07-18"
TASK = TaskSpec(id="t1", title="notes", description="add notes", files=["notes.txt"])
PATCH = Patch(text=new_file_patch("notes.txt", "hi"))
PASSING = "def test_ok():\n    assert True\n"


def script(tool: str, arguments: dict[str, Any], model: str | None = DATED) -> list[Any]:
    return parse_script([{"tool": tool, "replies": [{"arguments": arguments, "model": model}]}])


def asked_for(server: ScriptedOpenAI) -> set[str]:
    return {request.body["model"] for request in server.requests}


async def test_the_planners_result_names_the_model_that_answered() -> None:
    request = PlanRequest(run_id="r1", goal="add notes")
    async with (
        ScriptedOpenAI(script("submit_plan", plan(("a", [])).model_dump())) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        result = await Planner(client)(request)
        asked = asked_for(server)

    assert isinstance(result, PlanResult)
    assert (asked, result.model) == ({ASKED}, DATED)


async def test_the_coders_result_names_the_model_that_answered(tmp_path: Path) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=TASK, repo=RepoRef(path=str(repo))
    )
    edits = {"summary": "notes", "edits": [{"kind": "write", "path": "notes.txt", "content": "hi"}]}
    async with (
        ScriptedOpenAI(script("submit_edits", edits)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        result = await Coder(client)(request)
        asked = asked_for(server)

    assert isinstance(result, CodeResult)
    assert (asked, result.model) == ({ASKED}, DATED)


async def test_the_testers_result_names_the_model_that_answered(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_ok.py": PASSING})
    request = TestRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TASK,
        patch=PATCH,
        repo=RepoRef(path=str(repo)),
        test_command="python -m pytest -q",
    )
    gate = await SafetyGate(bus, load_policy(None)).serve()
    try:
        async with (
            ScriptedOpenAI(script("submit_tests", {"rationale": "covered", "edits": []})) as server,
            OpenAIClient(settings(server.base_url)) as client,
        ):
            role = testing_role.Tester(
                client, bwrap_sandbox, BusGateClient(bus), Limits(wall_seconds=60)
            )
            result = await role(request)
            asked = asked_for(server)
    finally:
        await gate.unsubscribe()

    assert isinstance(result, TestResult)
    assert result.passed, result.output
    assert (asked, result.model) == ({ASKED}, DATED)


async def review(model: str | None) -> ReviewResult:
    request = ReviewRequest(run_id="r1", task_id="t1", task=TASK, patch=PATCH)
    async with (
        ScriptedOpenAI(script("submit_review", {"comments": [], "approved": True}, model)) as s,
        OpenAIClient(settings(s.base_url)) as client,
    ):
        result = await Reviewer(client)(request)
    assert isinstance(result, ReviewResult)
    return result


async def test_the_reviewers_result_names_the_model_that_answered() -> None:
    assert (await review(DATED)).model == DATED


async def test_an_answer_naming_no_model_is_put_down_to_the_one_asked_for() -> None:
    assert (await review("")).model == ASKED


async def test_a_model_name_too_long_for_a_result_is_cut_so_the_result_still_decodes() -> None:
    result = await review("m" * 5000)

    assert len(result.model) == SHORT_TEXT_CHARS
    assert result.model.startswith("m" * 100)
    assert decode(encode(result), ResultMessage) == result


async def test_a_model_name_with_a_lone_surrogate_is_made_encodable() -> None:
    """JSON may escape a lone surrogate (`"gpt\ud800"`), which no message could encode."""
    result = await review("gpt\ud800")

    assert result.model == "gpt?"
    assert decode(encode(result), ResultMessage) == result
