"""A role that hands its work back (to retry it later, or to wait for a person) still reports
what it spent: the exception it raises carries the tokens of the answers it paid for, which
the worker then reports (tests/bus/test_worker.py) and the run counts
(tests/coordinator/test_usage_accounting.py). Real HTTP to the scripted LLM throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents import tester as testing_role  # not `Tester`: pytest would collect it
from codeyard.agents.coder import Coder
from codeyard.bus import GiveUp, RetryLater
from codeyard.bus.gate_client import GateUnavailable
from codeyard.bus.worker import AwaitApproval
from codeyard.llm import OpenAIClient
from codeyard.sandbox import Limits, RunOutcome, SandboxUnavailable
from codeyard.schemas import (
    ActionCheck,
    CodeRequest,
    GateDecision,
    Patch,
    RepoRef,
    TaskSpec,
    TestRequest,
    Usage,
)
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from codeyard.testing.scripted_worker import new_file_patch
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo

TOKENS = {"prompt_tokens": 150, "completion_tokens": 50}
SPENT = Usage(calls=1, prompt_tokens=150, completion_tokens=50)
TASK = TaskSpec(id="t1", title="greet", description="greet", files=["app.py"])


async def test_a_coder_whose_model_goes_away_hands_back_what_it_spent(tmp_path: Path) -> None:
    # The first answer is paid for but does not apply; asked again, the endpoint fails.
    nowhere = {"kind": "replace", "path": "app.py", "search": "not in the file", "replace": "x"}
    replies = [
        {"arguments": {"summary": "s", "edits": [nowhere]}, "usage": TOKENS},
        {"status": 503},
    ]
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    request = CodeRequest(
        run_id="r1", task_id="t1", attempt=1, goal="greet", task=TASK, repo=RepoRef(path=str(repo))
    )
    async with (
        ScriptedOpenAI(parse_script([{"tool": "submit_edits", "replies": replies}])) as server,
        OpenAIClient(settings(server.base_url, max_retries=1)) as client,
    ):
        with pytest.raises(RetryLater, match="the model is unavailable") as retry:
            await Coder(client)(request)

    assert (retry.value.usage, retry.value.model) == (SPENT, "base-model")


def work_for_the_tester(repo: Path, test_command: str) -> TestRequest:
    """The tester's work on `repo`: a patch that adds notes.txt, tested with `test_command`."""
    return TestRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TASK,
        patch=Patch(text=new_file_patch("notes.txt", "hi")),
        repo=RepoRef(path=str(repo)),
        test_command=test_command,
    )


class Gate:
    """Answers every check with `decision`, or, with none, is not there."""

    def __init__(self, decision: GateDecision | None) -> None:
        self.decision = decision

    async def check(self, check: ActionCheck) -> GateDecision:
        if self.decision is None:
            raise GateUnavailable("no safety gate answered")
        return self.decision


class NoSandbox:
    name = "none"

    async def run(self, *args: object, **kwargs: object) -> RunOutcome:
        raise AssertionError("the command ran without the gate's clearance")


ASKS = GateDecision(decision="needs_approval", approval_id="a1b2c3d4e5f60718", reason="ask")
DENIES = GateDecision(decision="deny", reason="not a test tool", rule="commands.deny")


@pytest.mark.parametrize(
    ("gate", "handed_back"),
    [(Gate(ASKS), AwaitApproval), (Gate(None), RetryLater), (Gate(DENIES), GiveUp)],
    ids=["needs approval", "no gate", "denied"],
)
async def test_a_tester_stopped_by_the_gate_hands_back_what_it_spent(
    tmp_path: Path, gate: Gate, handed_back: type[AwaitApproval | RetryLater | GiveUp]
) -> None:
    # The tester asks the model for tests before its command goes to the gate: those tokens
    # are spent whatever the gate says (and again when the work comes back after an approval).
    answer = {"arguments": {"rationale": "covered", "edits": []}, "usage": TOKENS}
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    request = work_for_the_tester(repo, "make integration-test")
    async with (
        ScriptedOpenAI(parse_script([{"tool": "submit_tests", "replies": [answer]}])) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        role = testing_role.Tester(client, NoSandbox(), gate, Limits())
        with pytest.raises(handed_back) as stopped:
            await role(request)

    assert isinstance(stopped.value, AwaitApproval | RetryLater | GiveUp)
    assert stopped.value.usage == SPENT
    assert stopped.value.model == "base-model"  # and the model that spent it


class SandboxGone:
    """A backend whose engine went away after the worker started (the docker daemon stopped)."""

    name = "gone"

    async def run(self, *args: object, **kwargs: object) -> RunOutcome:
        raise SandboxUnavailable("the Docker engine at unix:///gone does not answer")


async def test_a_tester_whose_sandbox_went_away_hands_back_what_it_spent(tmp_path: Path) -> None:
    """It failed like any error, and the tokens of its answer were counted nowhere."""
    answer = {"arguments": {"rationale": "covered", "edits": []}, "usage": TOKENS}
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_app.py": "def test_ok(): pass\n"})
    request = work_for_the_tester(repo, "python -m pytest -q")
    allows = Gate(GateDecision(decision="allow"))
    async with (
        ScriptedOpenAI(parse_script([{"tool": "submit_tests", "replies": [answer]}])) as server,
        OpenAIClient(settings(server.base_url)) as client,
    ):
        role = testing_role.Tester(client, SandboxGone(), allows, Limits())
        with pytest.raises(RetryLater, match="the sandbox cannot run the tests") as retry:
            await role(request)

    assert (retry.value.usage, retry.value.model) == (SPENT, "base-model")
