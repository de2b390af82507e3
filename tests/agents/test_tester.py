"""The tester runs the repository's test command as the safety gate read it: a shell command line
(`&&`, redirects, `cd`), run with /bin/sh in the real sandbox. Real HTTP to the scripted LLM, a
real gate with the default policy over NATS, bubblewrap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from codeyard.agents import tester as testing_role  # not `Tester`: pytest would collect it
from codeyard.agents.failure_report import missing_program
from codeyard.agents.policy import Policy, load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.agents.tester import MAX_TESTS_PATCH_BYTES
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.bus.worker import GiveUp
from codeyard.llm import OpenAIClient
from codeyard.sandbox import BwrapSandbox, Limits, MiB, RunOutcome
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


def allowing_every_command(tmp_path: Path) -> Policy:
    """A deployment's policy that runs any test command without asking."""
    path = tmp_path / "policy.toml"
    path.write_text('extends = "default"\n\n[defaults]\nrun_command = "allow"\n')
    return load_policy(path)


async def answer_of_the_tester(
    bus: Bus,
    sandbox: BwrapSandbox,
    repo: Path,
    test_command: str,
    limits: Limits,
    policy: Policy | None = None,
    tests_answer: dict[str, Any] = NO_NEW_TESTS,
) -> TestResult:
    """What the tester answers for a change adding notes.txt to `repo`, with a real gate (of
    the default policy unless told) and a model that adds no tests (unless told)."""
    request = TestRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TaskSpec(id="t1", title="notes", description="add notes", files=[]),
        patch=Patch(text=new_file_patch("notes.txt", "hi")),
        repo=RepoRef(path=str(repo)),
        test_command=test_command,
    )
    gate = await SafetyGate(bus, policy or load_policy(None)).serve()
    try:
        async with (
            ScriptedOpenAI(
                parse_script([{"tool": "submit_tests", "replies": [tests_answer]}])
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


NOTES_TEST = (
    "from pathlib import Path\n\n\ndef test_notes():\n    assert Path('notes.txt').exists()\n"
)


@pytest.mark.parametrize("padding", [0, MAX_TESTS_PATCH_BYTES], ids=["kept", "too-large"])
async def test_the_tests_the_tester_writes_come_back_as_a_diff_to_merge(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path, padding: int
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_where.py": IN_TESTS})
    written = NOTES_TEST + "#" * padding + "\n"
    answer = {
        "arguments": {
            "rationale": "notes.txt must exist",
            "edits": [
                {"kind": "write", "path": "tests/test_notes.py", "content": written},
                {"kind": "write", "path": "notes.txt", "content": "changed by the tester"},
            ],
        }
    }
    result = await answer_of_the_tester(
        bus,
        bwrap_sandbox,
        repo,
        "python -m pytest -q -p no:cacheprovider",
        Limits(wall_seconds=60),
        tests_answer=answer,
    )

    assert result.output.startswith("ignored tester edit of notes.txt: not a test file\n")
    assert result.tests_run == 2, result.output  # its test ran with the repository's
    if padding:
        assert result.tests is None
        assert "tester's tests run but not kept: their diff is" in result.output
    else:
        assert result.tests is not None
        assert result.tests.text.startswith(
            "diff --git a/tests/test_notes.py b/tests/test_notes.py"
        )
        assert "notes.txt b/notes.txt" not in result.tests.text  # only test files
        assert "+    assert Path('notes.txt').exists()" in result.tests.text


async def test_tests_the_model_cannot_write_leave_the_repository_s_to_judge(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    """A model whose answers never fit (a small one, often) made the tester give up, and the
    task and its run failed, though the repository's own tests could judge the change."""
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_where.py": IN_TESTS})
    result = await answer_of_the_tester(
        bus,
        bwrap_sandbox,
        repo,
        "cd tests && python -m pytest -q -p no:cacheprovider",
        Limits(wall_seconds=60),
        tests_answer={"text": "I would rather not write tests."},
    )

    assert result.passed, result.output
    assert result.output.startswith("tester's tests not written: the model could not answer")
    assert result.tests_run == 1
    assert result.tests is None
    assert result.usage.calls == 3  # its answers are paid for, and counted


async def test_an_existing_test_file_the_tester_was_not_shown_is_not_overwritten(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    """The tester is shown the task's files only; its write of an existing test file replaced
    the tests there with its own, and the deletion was merged."""
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_where.py": IN_TESTS})
    answer = {
        "arguments": {
            "rationale": "notes.txt must exist",
            "edits": [
                {"kind": "write", "path": "tests/test_where.py", "content": NOTES_TEST},
                {"kind": "write", "path": "tests/test_notes.py", "content": NOTES_TEST},
            ],
        }
    }
    result = await answer_of_the_tester(
        bus,
        bwrap_sandbox,
        repo,
        "cd tests && python -m pytest -q -p no:cacheprovider",
        Limits(wall_seconds=60),
        tests_answer=answer,
    )

    assert result.output.startswith(
        "ignored tester write of tests/test_where.py: the file exists and was not shown to it"
    )
    assert result.tests_run == 2, result.output  # the repository's test, and the new one
    assert result.tests is not None
    assert "tests/test_where.py" not in result.tests.text
    assert "b/tests/test_notes.py" in result.tests.text


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


async def test_a_test_command_the_sandbox_cannot_run_is_a_setup_error_not_a_failing_change(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    # Sent back to the coder as failing tests, it would use up every attempt of every task.
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_where.py": IN_TESTS})
    with pytest.raises(GiveUp) as gave_up:
        await answer_of_the_tester(
            bus,
            bwrap_sandbox,
            repo,
            "cd tests && nosuchmake test",
            Limits(wall_seconds=60),
            allowing_every_command(tmp_path),
        )
    assert str(gave_up.value) == (
        "the test command 'cd tests && nosuchmake test' cannot run 'nosuchmake' in the bwrap "
        "sandbox (not there, or not executable): give the run a test command that runs there "
        "(codeyard run --test-command), or a sandbox that has it"
    )


async def test_a_program_missing_to_a_test_script_fails_the_tests(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    # The script's own business, as any test's: the coder may fix it.
    repo = one_commit_repo(tmp_path / "repo", {"run_tests.sh": "echo running\nnosuchmake\n"})
    result = await answer_of_the_tester(
        bus,
        bwrap_sandbox,
        repo,
        "sh run_tests.sh",
        Limits(wall_seconds=60),
        allowing_every_command(tmp_path),
    )
    assert not result.passed
    assert "run_tests.sh: 2: nosuchmake: not found" in result.output, result.output


def ran(exit_code: int, output: str) -> RunOutcome:
    return RunOutcome(exit_code=exit_code, output=output, timed_out=False, duration_seconds=0.1)


@pytest.mark.parametrize(
    ("command", "outcome", "program"),
    [
        ("make test", ran(127, "/bin/sh: 1: make: not found\n"), "make"),  # dash
        ("make test", ran(127, "sh: line 1: make: command not found\n"), "make"),  # bash as sh
        ("make test", ran(127, "sh: make: not found\n"), "make"),  # busybox
        ("./check.sh", ran(126, "/bin/sh: 1: ./check.sh: Permission denied\n"), "./check.sh"),
        ("cd a && 'go' test", ran(127, "/bin/sh: 1: go: not found\n"), "go"),
        # a program a script or make runs, not the command line
        ("sh t.sh", ran(127, "t.sh: 3: pytest: not found\n"), ""),
        ("make test", ran(2, "/bin/sh: 1: pytest: not found\nmake: *** [test] Error 127\n"), ""),
        # the tests printed it, and exited 127 for reasons of their own
        ("pytest", ran(127, "/bin/sh: 1: rsync: not found\n"), ""),
        ("make test", ran(0, "/bin/sh: 1: make: not found\n"), ""),
        ("make 'test", ran(127, "/bin/sh: 1: Syntax error: Unterminated quoted string\n"), ""),
        # pytest not installed for the sandbox's Python: every change would fail its tests
        (
            "python -m pytest -q",
            ran(1, "/usr/bin/python3: No module named pytest\n"),
            "python -m pytest",
        ),
        (
            "cd app && python3.11 -m pytest",
            ran(1, "python3.11: No module named pytest\n"),
            "python -m pytest",
        ),
        # a test that ran a module of its own, or said so among other things
        ("python -m pytest", ran(1, "/usr/bin/python3: No module named hypothesis\n"), ""),
        ("python -m pytest", ran(1, "collected 3 items\npython: No module named pytest\n"), ""),
        ("python -m pytest", ran(2, "/usr/bin/python3: No module named pytest\n"), ""),
    ],
)
def test_the_program_a_test_command_could_not_run(
    command: str, outcome: RunOutcome, program: str
) -> None:
    assert missing_program(command, outcome) == program
