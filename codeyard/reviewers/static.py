"""`StaticReviewer`: ruff and bandit over the Python lines a patch adds; no LLM.

Run it with `codeyard worker review --name static` (registered in the `codeyard.reviewers`
entry point group) or `--plugin codeyard.reviewers.static:StaticReviewer --name static`, and
list `review.static` among a run's reviewers. Needs `pip install 'codeyard[static-review]'`.

Only findings on lines the patch adds count: a reviewer that blocked every task for what the
repository already had would never approve anything. ruff uses the repository's own
configuration when it has one (its rules are the project's style), else the rules in
`RUFF_RULES`; bandit reports findings of at least `BANDIT_SEVERITY`.

Neither tool imports or runs the code it checks, but both parse files the coder wrote and read
configuration the repository controls (ruff's `extend` can name any path), so they run in the
sandbox like everything else that touches generated code.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import posixpath
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from codeyard.reviewers.checkout import patched_checkout
from codeyard.reviewers.diff_lines import added_lines
from codeyard.sandbox import SANDBOX_WORKDIR, BwrapSandbox, GiB, Limits, Sandbox
from codeyard.schemas import ReviewComment, ReviewRequest, ReviewResult

RUFF_RULES = "E9,F,B"  # syntax errors, pyflakes (unused imports, undefined names), bugbear
BANDIT_SEVERITY = "medium"  # low is mostly `assert` and `import subprocess`: noise in review
MAX_COMMENTS = 50
TOOL_LIMITS = Limits(wall_seconds=180, cpu_seconds=180, memory_bytes=2 * GiB, pids=64)


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    text: str


class StaticToolFailed(Exception):
    pass


def host_python_sandbox() -> Sandbox:
    """ruff and bandit are installed next to codeyard, so they run under this machine's Python:
    bubblewrap binds it read-only, while the docker backend's image has its own Python without
    them. `SandboxUnavailable` (how to install bubblewrap) when bwrap cannot run here."""
    sandbox = BwrapSandbox()
    sandbox.probe()
    return sandbox


class StaticReviewer:
    """Requests changes for each ruff or bandit finding on an added line; approves otherwise."""

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits = TOOL_LIMITS) -> None:
        missing = [tool for tool in ("ruff", "bandit") if importlib.util.find_spec(tool) is None]
        if missing:
            raise RuntimeError(
                f"the static reviewer needs {' and '.join(missing)}: "
                "pip install 'codeyard[static-review]'"
            )
        self.sandbox = sandbox or host_python_sandbox()
        self.limits = limits

    async def review(self, request: ReviewRequest) -> ReviewResult:
        added = {
            path: lines
            for path, lines in added_lines(request.patch.text).items()
            if path.endswith((".py", ".pyi")) and lines
        }
        if not added:
            return ReviewResult(approved=True)
        async with patched_checkout(request) as root:
            paths = sorted(path for path in added if (root / path).is_file())
            if not paths:
                return ReviewResult(approved=True)
            try:
                found = await asyncio.gather(self._ruff(root, paths), self._bandit(root, paths))
            except StaticToolFailed as exc:
                return ReviewResult(approved=False, comments=[ReviewComment(text=str(exc))])
        findings = sorted({f for tool in found for f in tool if f.line in added.get(f.path, set())})
        comments = [ReviewComment(path=f.path, line=f.line, text=f.text) for f in findings]
        if len(comments) > MAX_COMMENTS:
            more = len(comments) - MAX_COMMENTS
            comments = [*comments[:MAX_COMMENTS], ReviewComment(text=f"... and {more} more")]
        return ReviewResult(approved=not comments, comments=comments)

    async def _ruff(self, root: Path, paths: list[str]) -> list[Finding]:
        rules = [] if _has_ruff_config(root) else ["--select", RUFF_RULES]
        report = await self._run_tool(
            root,
            "ruff",
            ["check", "--no-cache", "--exit-zero", "--force-exclude", "--output-format=json"],
            [*rules, "--output-file"],
            paths,
        )
        return [
            Finding(
                _relative(entry["filename"]),
                int(entry["location"]["row"]),
                f"ruff {entry.get('code') or 'syntax'}: {entry['message']}",
            )
            for entry in report
        ]

    async def _bandit(self, root: Path, paths: list[str]) -> list[Finding]:
        report = await self._run_tool(
            root,
            "bandit",
            ["--quiet", "--format", "json", "--severity-level", BANDIT_SEVERITY],
            ["--output"],
            paths,
        )
        return [
            Finding(
                _relative(entry["filename"]),
                int(entry["line_number"]),
                f"bandit {entry['test_id']} ({entry['issue_severity'].lower()} severity): "
                f"{entry['issue_text']}",
            )
            for entry in report["results"]
        ]

    async def _run_tool(
        self, root: Path, tool: str, options: list[str], output_flag: list[str], paths: list[str]
    ) -> Any:
        """Run `python -m tool` in the sandbox, writing its JSON report to a file of a fresh
        directory (the combined stdout/stderr of a sandboxed run would mix in warnings)."""
        reports = root / f".codeyard-review-{uuid.uuid4().hex}"
        reports.mkdir()  # a fresh name: nothing in the patch can have planted a link here
        report = reports / f"{tool}.json"
        inside = f"{SANDBOX_WORKDIR}/{reports.name}/{report.name}"
        command = ["python", "-m", tool, *options, *output_flag, inside, "--", *paths]
        outcome = await self.sandbox.run(root, command, self.limits)
        try:
            return json.loads(report.read_text())
        except (OSError, ValueError):
            tail = outcome.output.strip()[-2000:] or f"exit code {outcome.exit_code}"
            raise StaticToolFailed(f"{tool} could not check the change:\n{tail}") from None


def _has_ruff_config(root: Path) -> bool:
    if (root / "ruff.toml").is_file() or (root / ".ruff.toml").is_file():
        return True
    try:
        pyproject: Mapping[str, Any] = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, ValueError):
        return False
    return "ruff" in pyproject.get("tool", {})


def _relative(filename: str) -> str:
    """A tool's file name (absolute inside the sandbox, or `./`-prefixed) as a repo path."""
    path = PurePosixPath(posixpath.normpath(filename))
    return str(path.relative_to(SANDBOX_WORKDIR) if path.is_absolute() else path)
