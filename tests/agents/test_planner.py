"""The planner's picture of the repository names the run's test command (`codeyard run
--test-command`), the one the tester will run, instead of the one detection would guess. Real
HTTP to the scripted LLM, a real git repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.planner import Planner
from codeyard.llm import OpenAIClient
from codeyard.schemas import PlanRequest, PlanResult, RepoRef
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.agents.plans import plan
from tests.llm.scenario import settings


@pytest.mark.parametrize(
    ("test_command", "shown"),
    [("make check", "make check"), ("", "python -m pytest")],  # the sample has pytest config
    ids=["the-runs", "detected"],
)
async def test_the_planner_is_shown_the_runs_test_command(
    sample_repo: Path, test_command: str, shown: str
) -> None:
    answer = plan(("a", [])).model_dump()
    script = [{"tool": "submit_plan", "replies": [{"arguments": answer}]}]
    request = PlanRequest(
        run_id="r1", goal="add mul", repo=RepoRef(path=str(sample_repo)), test_command=test_command
    )
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        result = await Planner(client)(request)
        [asked] = server.requests

    assert isinstance(result, PlanResult)
    prompt = "\n".join(message["content"] for message in asked.body["messages"])
    assert f"### Test command\n\n{shown}\n" in prompt
