"""A role that gives up still reports what it spent: the coder asked three times, over real
HTTP to the scripted LLM, and its `GiveUp` carries the tokens of all three answers (the run
counts them; they used to be lost, so a run of failed tasks showed 0 calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.coder import EDIT_ANSWERS, Coder
from codeyard.bus import GiveUp
from codeyard.llm import OpenAIClient
from codeyard.schemas import CodeRequest, RepoRef, TaskSpec, Usage
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo

NOWHERE = {"kind": "replace", "path": "app.py", "search": "not in the file", "replace": "x"}


async def test_a_coder_giving_up_reports_every_answer_it_paid_for(tmp_path: Path) -> None:
    answer = {"summary": "edit", "edits": [NOWHERE]}
    usage = {"prompt_tokens": 100, "completion_tokens": 20}
    script = [{"tool": "submit_edits", "replies": [{"arguments": answer, "usage": usage}]}]
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    request = CodeRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        goal="greet",
        task=TaskSpec(id="t1", title="greet", description="greet", files=["app.py"]),
        repo=RepoRef(path=str(repo)),
    )
    async with (
        ScriptedOpenAI(parse_script(script)) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        with pytest.raises(GiveUp, match="no edits that apply") as gave_up:
            await Coder(client)(request)
        asked = len(server.requests)

    assert asked == EDIT_ANSWERS
    spent = gave_up.value.usage
    assert spent == Usage(calls=3, prompt_tokens=300, completion_tokens=60)
