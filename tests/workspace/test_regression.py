"""The suite after a merge runs the repository's test command as the safety gate read it: a
shell command line (`&&`, `||`, redirects, `cd`), run with /bin/sh in the real sandbox; the
run's own command (`codeyard run --test-command`) rather than a detected one. A real gate with
the default policy (or one extending it) over NATS, bubblewrap."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.sandbox import BwrapSandbox, Limits
from codeyard.workspace import regression
from codeyard.workspace.regression import SandboxedSuite
from tests.repositories import one_commit_repo

# Passes only where the command's `cd` took it.
IN_TESTS = (
    "from pathlib import Path\n\n\ndef test_in_tests():\n    assert Path.cwd().name == 'tests'\n"
)
FAILS = "def test_fails():\n    assert 1 == 2\n"


@pytest.mark.parametrize(
    ("command", "tests", "failures"),
    [
        (
            "cd tests && python -m pytest -q > pytest.log && tail -n 1 pytest.log",
            {"tests/test_where.py": IN_TESTS},
            None,
        ),
        (  # only the report's last lines, and the suite still fails
            "cd tests && python -m pytest -q > pytest.log || (tail -n 2 pytest.log && false)",
            {"tests/test_where.py": IN_TESTS, "tests/test_fails.py": FAILS},
            "FAILED test_fails.py::test_fails - assert 1 == 2\n1 failed, 1 passed in ",
        ),
    ],
    ids=["passing", "failing"],
)
async def test_the_suite_runs_as_the_shell_line_the_gate_allowed(
    bus: Bus,
    bwrap_sandbox: BwrapSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    tests: dict[str, str],
    failures: str | None,
) -> None:
    repo = one_commit_repo(tmp_path / "repo", tests)
    # a repository whose test command is that shell line
    monkeypatch.setattr(regression, "detect_test_command", lambda root: command)
    gate = await SafetyGate(bus, load_policy(None)).serve()  # it allows these lines, as read
    try:
        suite = SandboxedSuite(bwrap_sandbox, BusGateClient(bus), Limits(wall_seconds=60))
        report = await suite.failures(repo, "r1", "t1", 1)
    finally:
        await gate.unsubscribe()

    if failures is None:
        assert report is None
    else:
        assert report is not None
        assert failures in report, report  # after what pytest plugins warn on stderr, if any
        assert "[100%]" not in report  # the rest of the report went to pytest.log


# A project's own test target, which `make test` runs and detection knows nothing of.
MAKEFILE = "test:\n\t@echo 'check_totals: expected 3, got 4'\n\t@false\n"
PASSES = "def test_passes():\n    assert True\n"


def allowing(command: str) -> str:
    """A policy extending the default one that allows the command line `command` (a regex)."""
    return f"""extends = "default"
[[rules]]
name = "project-tests"
actions = ["run_command"]
effect = "allow"
reason = "the project's tests"
commands = ['{command}']
"""


ALLOW_MAKE_TEST = allowing("^make\\s+test$")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here to run in the sandbox")
async def test_the_suite_runs_the_runs_test_command_instead_of_a_detected_one(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    """A Makefile project whose tests/ would be detected as a passing pytest suite: the run's
    `make test` is what runs, allowed by a policy that knows it, and its failure is reported."""
    repo = one_commit_repo(
        tmp_path / "repo", {"Makefile": MAKEFILE, "tests/test_passes.py": PASSES}
    )
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(ALLOW_MAKE_TEST, encoding="utf-8")
    gate = await SafetyGate(bus, load_policy(policy_file)).serve()
    try:
        suite = SandboxedSuite(bwrap_sandbox, BusGateClient(bus), Limits(wall_seconds=60))
        detected = await suite.failures(repo, "r1", "t1", 1)
        chosen = await suite.failures(repo, "r1", "t1", 1, test_command="make test")
    finally:
        await gate.unsubscribe()

    assert detected is None  # python -m pytest: tests/ passes
    assert chosen is not None
    assert "check_totals: expected 3, got 4" in chosen, chosen


SLOW = "import time\n\n\ndef test_slow():\n    time.sleep(30)\n"


async def test_a_suite_stopped_by_a_limit_says_which_limit(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_slow.py": SLOW})
    gate = await SafetyGate(bus, load_policy(None)).serve()
    try:
        suite = SandboxedSuite(bwrap_sandbox, BusGateClient(bus), Limits(wall_seconds=2))
        report = await suite.failures(repo, "r1", "t1", 1, test_command="python -m pytest -q")
    finally:
        await gate.unsubscribe()

    assert report is not None
    assert report.startswith("timed out: sandbox limit hit: wall time (2 s)\n"), report


ALLOW_A_RUNNER = allowing("^python -m nosuchrunner$")


async def test_a_suite_this_sandbox_cannot_start_takes_no_merge_back(
    bus: Bus, bwrap_sandbox: BwrapSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The coordinator's sandbox lacks the runner the tester's has (pytest missing from an
    image, say): every merge was taken back as a regression, and every task failed."""
    repo = one_commit_repo(tmp_path / "repo", {"tests/test_passes.py": PASSES})
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(ALLOW_A_RUNNER, encoding="utf-8")
    gate = await SafetyGate(bus, load_policy(policy_file)).serve()
    try:
        suite = SandboxedSuite(bwrap_sandbox, BusGateClient(bus), Limits(wall_seconds=60))
        report = await suite.failures(repo, "r1", "t1", 1, test_command="python -m nosuchrunner")
    finally:
        await gate.unsubscribe()

    assert report is None
    [said] = [record for record in caplog.records if record.name == regression.__name__]
    assert said.levelname == "ERROR"
    assert "'python -m nosuchrunner' cannot run 'python -m nosuchrunner'" in said.getMessage()
