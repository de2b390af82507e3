"""The tester: applies the coder's patch to a fresh checkout, adds tests for the task's
acceptance criteria where the model finds them missing, and runs the repository's test command
in the sandbox, with `/bin/sh -c` as the safety gate read it. Generated code never runs outside
it."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path, PurePosixPath

from codeyard.agents.asking import answered_by, ask_model
from codeyard.agents.edits import EditError, apply_edits
from codeyard.agents.failure_report import (
    MAX_CHARS,
    count_tests_run,
    missing_program,
    trim_test_output,
)
from codeyard.agents.outputs import FileEdit, TestOutput
from codeyard.agents.prompt_context import describe_task, fenced, quote_files
from codeyard.agents.prompt_templates import render_prompt
from codeyard.agents.repo_summary import detect_test_command
from codeyard.agents.working_copy import (
    PatchDoesNotApply,
    apply_patch,
    blind_writes,
    read_files,
    shown_whole,
    working_copy,
)
from codeyard.bus.gate_client import GateClient, require_clearance
from codeyard.bus.worker import GiveUp, RetryLater
from codeyard.llm import LLMClient
from codeyard.sandbox import Limits, Sandbox, SandboxUnavailable, shell_command
from codeyard.sandbox.limit_hit import limit_header
from codeyard.schemas import Patch, Result, TestRequest, TestResult, WorkItem

# The most of the tester's tests a result carries (inline: a tester may not store artifacts);
# larger ones still run, and are not kept.
MAX_TESTS_PATCH_BYTES = 64 * 1024


def is_test_path(path: str) -> bool:
    """Tester edits may only touch tests: a file under a tests directory or named test_*."""
    parts = PurePosixPath(path).parts
    name = parts[-1] if parts else ""
    in_tests = any(part in ("tests", "test") for part in parts[:-1])
    return in_tests or name.startswith("test_") or name.endswith("_test.py")


class Tester:
    def __init__(
        self, llm: LLMClient, sandbox: Sandbox, gate: GateClient, limits: Limits | None = None
    ) -> None:
        self.llm = llm
        self.sandbox = sandbox
        self.gate = gate
        self.limits = limits or Limits()

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, TestRequest):
            raise GiveUp(f"the tester does not handle {type(item).__name__}")
        async with working_copy(item.repo) as root:
            try:
                await asyncio.to_thread(apply_patch, root, item.patch.text)
            except PatchDoesNotApply as exc:
                return TestResult(
                    passed=False, output=f"the patch does not apply to the current head:\n{exc}"
                )
            command = item.test_command or await asyncio.to_thread(detect_test_command, root)
            files = await asyncio.to_thread(read_files, root, item.task.files)
            messages = render_prompt(
                "tester",
                task=describe_task(item.task),
                patch=fenced(item.patch.text, "diff"),
                test_command=command or "(none found)",
                files=quote_files(files),
            )
            try:
                completion = await ask_model(
                    self.llm,
                    "tester",
                    messages,
                    TestOutput,
                    tool_name="submit_tests",
                    tool_description="Submit test files for the acceptance criteria (or none).",
                )
            except GiveUp as exc:
                # Tests of its own are the tester's addition: without them the repository's
                # still judge the change, where failing here failed the task and its run (a
                # small model's answers that never fit, a prompt over the model's context).
                usage, model, tests = exc.usage, exc.model, None
                notes = f"tester's tests not written: {exc}\n"
            else:
                usage, model = completion.usage, answered_by(completion)
                notes, tests = await asyncio.to_thread(
                    self._add_tests, root, completion.value.edits, shown_whole(files)
                )
            if not command:
                nothing_ran = f"{notes}no test command found: nothing ran"
                return TestResult(passed=True, output=nothing_ran, usage=usage, model=model)
            # Sandboxed or not, the command is the repository's to choose and the gate's to
            # allow: a test command that deploys or wipes is stopped here. The gate reads it as
            # a shell command line, and a shell runs it: what runs is what it allowed.
            await require_clearance(
                self.gate,
                item,
                "run_command",
                command,
                role="tester",
                spent=usage,
                model=model,
            )
            try:
                outcome = await self.sandbox.run(root, shell_command(command), self.limits)
            except SandboxUnavailable as exc:  # the engine went away, say: another may run it
                raise RetryLater(
                    f"the sandbox cannot run the tests: {exc}", usage=usage, model=model
                ) from exc
        program = missing_program(command, outcome)
        if program:
            raise GiveUp(
                f"the test command {command!r} cannot run {program!r} in the {self.sandbox.name} "
                "sandbox (not there, or not executable): give the run a test command that runs "
                "there (codeyard run --test-command), or a sandbox that has it",
                usage=usage,
                model=model,
            )
        # A limit the sandbox saw hit fails the tests even when the command exited 0: a test
        # runner may survive a worker the OOM killer killed, or a test that swallowed the error.
        header = limit_header(outcome, self.limits)
        return TestResult(
            passed=outcome.ok,
            # First, and kept whatever the trimming drops.
            output=header + trim_test_output(f"{notes}{outcome.output}", MAX_CHARS - len(header)),
            tests_run=count_tests_run(outcome.output),
            usage=usage,
            model=model,
            tests=tests,
        )

    @staticmethod
    def _add_tests(root: Path, edits: list[FileEdit], whole: set[str]) -> tuple[str, Patch | None]:
        """Notes on what of `edits` was not added, and the diff of the tests that were, to be
        merged with the task (None: none, or too large to carry). `whole`: the files the
        prompt showed whole, which alone may be written whole."""
        blind = set(blind_writes(root, edits, whole))
        notes = [
            f"ignored tester edit of {e.path}: not a test file"
            if not is_test_path(e.path)
            else f"ignored tester write of {e.path}: the file exists and was not shown to it, "
            "so the write would replace its tests"
            for e in edits
            if not is_test_path(e.path) or e.path in blind
        ]
        usable = [e for e in edits if is_test_path(e.path) and e.path not in blind]
        tests = None
        if usable:
            try:
                diff = apply_edits(root, usable).diff
            except EditError as exc:
                notes.append(f"tester's tests not added: {exc}")
            else:
                if (size := len(diff.encode())) > MAX_TESTS_PATCH_BYTES:
                    notes.append(
                        f"tester's tests run but not kept: their diff is {size} bytes, "
                        f"over {MAX_TESTS_PATCH_BYTES}"
                    )
                elif diff:
                    tests = Patch(text=diff, sha256=hashlib.sha256(diff.encode()).hexdigest())
        return "".join(f"{note}\n" for note in notes), tests
