"""The tester runs the repository's test command as the safety gate read it: a shell command line
(`&&`, redirects, `cd`), run with /bin/sh in the real sandbox. Real HTTP to the scripted LLM, a
real gate with the default policy over NATS, bubblewrap."""

from __future__ import annotations

from pathlib import Path

from codeyard.agents import tester as testing_role  # not `Tester`: pytest would collect it
from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.llm import OpenAIClient
from codeyard.sandbox import BwrapSandbox, Limits, MiB
from codeyard.schemas import Patch, RepoRef, TaskSpec, TestRequest, TestResult
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from codeyard.testing.scripted_worker import new_file_patch
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo

# Passes only where the command's `cd` took it.
IN_TESTS = (
    "from pathlib import Path\n\n\ndef test_in_tests():\n    assert Path.cwd().name == 'tests'\n"
)
# pytest's report goes to a file; only its last line reaches the output.
SHELL_LINE = "cd tests && python -m pytest -q > pytest.log && tail -n 1 pytest.log"
NO_NEW_TESTS = {"arguments": {"rationale": "covered", "edits": []}}


async def answer_of_the_tester(
    bus: Bus, sandbox: BwrapSandbox, repo: Path, test_command: str, limits: Limits
) -> TestResult:
    """What the tester answers for a change adding notes.txt to `repo`, with a real gate of the
    default policy and a model that adds no tests."""
    request = TestRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TaskSpec(id="t1", title="notes", description="add notes", files=[]),
        patch=Patch(text=new_file_patch("notes.txt", "hi")),
        repo=RepoRef(path=str(repo)),
        test_command=test_command,
    )
    gate = await SafetyGate(bus, load_policy(None)).serve()
    try:
        async with (
            ScriptedOpenAI(
                parse_script([{"tool": "submit_tests", "replies": [NO_NEW_TESTS]}])
            ) as server,
            OpenAIClient(settings(server.base_url)) as client,
        ):
            role = testing_role.Tester(client, sandbox, BusGateClient(bus), limits)
            result = await role(request)
    finally:
        await gate.unsubscribe()
    assert isinstance(result, TestResult)
    return result


async def test_a_test_command_runs_as_the_shell_line_the_gate_allowed(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_where.py": IN_TESTS})
    # the gate allows this line, as read
    result = await answer_of_the_tester(
        bus, bwrap_sandbox, repo, SHELL_LINE, Limits(wall_seconds=60)
    )

    assert result.passed, result.output
    # (what the sandbox's pytest plugins warn on stderr may come first)
    assert result.output.splitlines()[-1].startswith("1 passed in "), result.output
    assert "[100%]" not in result.output  # the rest of the report went to pytest.log
    assert result.tests_run == 1


# The test passes and pytest exits 0, but the run as a whole goes over its memory: the kernel's
# OOM killer kills one of the children, which the test does not look at.
CHILD_OOM_KILLED = """import subprocess
import sys

GRAB = "b = bytearray(150 * 1024 * 1024); import time; time.sleep(2)"


def test_children_may_die():
    children = [subprocess.Popen([sys.executable, "-c", GRAB]) for _ in range(4)]
    print("children exit codes:", [child.wait() for child in children])
"""


async def test_tests_that_pass_while_a_limit_was_hit_do_not_pass(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_children.py": CHILD_OOM_KILLED})
    limits = Limits(wall_seconds=60, memory_bytes=256 * MiB, tmpfs_bytes=32 * MiB)
    result = await answer_of_the_tester(bus, bwrap_sandbox, repo, "python -m pytest -q -s", limits)

    assert "1 passed" in result.output, result.output  # and pytest exited 0
    assert "-9" in result.output, result.output  # a child was OOM-killed
    assert not result.passed, result.output
    assert result.output.startswith(
        "sandbox limit hit: memory (256 MiB per process); the tests fail although the test "
        "command exited 0\n"
    ), result.output
