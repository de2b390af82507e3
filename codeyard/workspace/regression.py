"""The repository's whole test suite, run after each merge on the new integration head.

A patch tested alone can still break the head it lands on (another task changed what it relies
on). `SandboxedSuite` runs the repository's test command in the sandbox on a private copy of the
integration clone; the integrator reverts a merge whose suite fails and sends the task back.
The command is the run's (`codeyard run --test-command`), the one the tester ran, or else the
one detected in the head, as the tester detects it.

The command is checked with the safety gate as the task's own (same run, task, attempt, action
and command as the tester's check), so an approval a person gave the tester holds here too, and
runs with `/bin/sh -c`, as the gate read it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from codeyard.agents.failure_report import MAX_CHARS, missing_program, trim_test_output
from codeyard.agents.repo_summary import detect_test_command
from codeyard.bus.gate_client import GateClient
from codeyard.sandbox import Limits, Sandbox, shell_command
from codeyard.sandbox.limit_hit import limit_header
from codeyard.sandbox.scratch import scratch_directory_async
from codeyard.schemas import ActionCheck
from codeyard.workspace.git import checkout

log = logging.getLogger(__name__)

SUITE_SCRATCH = "codeyard-suite-"  # the prefix of the suite's scratch directories


class RegressionSuite(Protocol):
    async def failures(
        self, repo: Path, run_id: str, task_id: str, attempt: int, test_command: str = ""
    ) -> str | None:
        """None when the suite of `repo`'s HEAD passes (or there is nothing it may run); else
        the failure output, trimmed. `test_command` is the run's ("": detected in `repo`)."""
        ...


class SandboxedSuite:
    def __init__(self, sandbox: Sandbox, gate: GateClient, limits: Limits | None = None) -> None:
        self.sandbox = sandbox
        self.gate = gate
        self.limits = limits or Limits()

    async def failures(
        self, repo: Path, run_id: str, task_id: str, attempt: int, test_command: str = ""
    ) -> str | None:
        async with scratch_directory_async(SUITE_SCRATCH) as scratch:  # the suite runs in it
            copy = await asyncio.to_thread(checkout, repo, scratch / "head")
            command = test_command or await asyncio.to_thread(detect_test_command, copy)
            if not command:
                return None
            check = ActionCheck(
                run_id=run_id,
                task_id=task_id,
                attempt=attempt,
                trace_id=run_id,
                action="run_command",
                detail=command,
                role="tester",
            )
            decision = await self.gate.check(check)
            if decision.decision != "allow":
                # The tester ran this very command for this attempt, so this does not happen
                # unless the policy changed meanwhile; the task's own test run stands.
                log.warning("run %s: suite after %s not run: %s", run_id, task_id, decision.reason)
                return None
            outcome = await self.sandbox.run(copy, shell_command(command), self.limits)
        if outcome.ok:
            return None
        if program := missing_program(command, outcome):
            # The tester ran it for this attempt: this sandbox lacks what the tester's has. Each
            # merge taken back for it would fail every task; the task's own test run stands.
            log.error(
                "run %s: suite after %s not run: %r cannot run %r in the %s sandbox here; give "
                "the coordinator a sandbox that has it",
                run_id,
                task_id,
                command,
                program,
                self.sandbox.name,
            )
            return None
        # after trimming, which keeps the end of the output: the limit hit is the first thing said
        header = limit_header(outcome, self.limits)
        return header + trim_test_output(outcome.output, MAX_CHARS - len(header))
