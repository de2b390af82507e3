"""The suite after a merge runs the repository's test command as the safety gate read it: a
shell command line (`&&`, `||`, redirects, `cd`), run with /bin/sh in the real sandbox. A real
gate with the default policy over NATS, bubblewrap."""

from __future__ import annotations

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
