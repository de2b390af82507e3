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
sandbox like everything else that touches generated code. They run as `python -I -m tool`: in
isolated mode the checked directory is not on `sys.path`, so a `ruff.py` or `bandit.py` in the
patch cannot stand in for the tool. The report a tool writes is read without following a
symlink, only if it is a regular file and only up to `MAX_REPORT_BYTES`, off the event loop:
the sandboxed run could have left a FIFO, a link to /dev/zero or to a host file in its place. A
report that cannot be read fails the review; it never approves.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import posixpath
import stat
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
RUFF_CONFIGS = ("ruff.toml", ".ruff.toml", "pyproject.toml")  # where ruff reads its settings
MAX_REPORT_BYTES = 16 * 1024 * 1024  # a tool's JSON report; more is not a report of one patch
TOOL_LIMITS = Limits(wall_seconds=180, cpu_seconds=180, memory_bytes=2 * GiB, pids=64)


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    text: str


class StaticToolFailed(Exception):
    pass


class UnreadableFile(Exception):
    """A file of the checkout the reviewer will not read; the message says why."""


def host_python_sandbox() -> Sandbox:
    """ruff and bandit are installed next to codeyard, so they run under this machine's Python:
    bubblewrap binds it read-only, while the docker backend's image has its own Python without
    them. `SandboxUnavailable` (how to install bubblewrap) when bwrap cannot run here."""
    sandbox = BwrapSandbox()
    sandbox.probe()
    return sandbox


class StaticReviewer:
    """Requests changes for each ruff or bandit finding on an added line; approves otherwise."""

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        limits: Limits = TOOL_LIMITS,
        max_report_bytes: int = MAX_REPORT_BYTES,
    ) -> None:
        missing = [tool for tool in ("ruff", "bandit") if importlib.util.find_spec(tool) is None]
        if missing:
            raise RuntimeError(
                f"the static reviewer needs {' and '.join(missing)}: "
                "pip install 'codeyard[static-review]'"
            )
        self.sandbox = sandbox or host_python_sandbox()
        self.limits = limits
        self.max_report_bytes = max_report_bytes

    async def review(self, request: ReviewRequest) -> ReviewResult:
        changed = added_lines(request.patch.text)
        python = (".py", ".pyi")
        added = {path: lines for path, lines in changed.items() if path.endswith(python) and lines}
        # A patch that writes ruff's configuration could switch its checks off (`select = []`):
        # its files are then checked with ours alone.
        self_configured = any(PurePosixPath(path).name in RUFF_CONFIGS for path in changed)
        if not added:
            return ReviewResult(approved=True)
        # The coder's patch alone: the lines `added` names are where they say only without the
        # tester's tests, which may add to the coder's files (and are not the coder's to fix).
        async with patched_checkout(request, tests=False) as root:
            paths = sorted(path for path in added if (root / path).is_file())
            if not paths:
                return ReviewResult(approved=True)
            try:
                found = await asyncio.gather(
                    self._ruff(root, paths, isolated=self_configured), self._bandit(root, paths)
                )
            except StaticToolFailed as exc:
                return ReviewResult(approved=False, comments=[ReviewComment(text=str(exc))])
        findings = sorted({f for tool in found for f in tool if f.line in added.get(f.path, set())})
        comments = [ReviewComment(path=f.path, line=f.line, text=f.text) for f in findings]
        if len(comments) > MAX_COMMENTS:
            more = len(comments) - MAX_COMMENTS
            comments = [*comments[:MAX_COMMENTS], ReviewComment(text=f"... and {more} more")]
        return ReviewResult(approved=not comments, comments=comments)

    async def _ruff(self, root: Path, paths: list[str], isolated: bool) -> list[Finding]:
        if isolated:
            rules = ["--isolated", "--select", RUFF_RULES]
        elif await asyncio.to_thread(_has_ruff_config, root):
            rules = []
        else:
            rules = ["--select", RUFF_RULES]
        report = await self._run_tool(
            root,
            "ruff",
            ["check", "--no-cache", "--exit-zero", "--force-exclude", "--output-format=json"],
            [*rules, "--output-file"],
            paths,
        )
        with _report_shape("ruff"):
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
        with _report_shape("bandit"):
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
        """Run `python -I -m tool` in the sandbox, writing its JSON report to a file of a fresh
        directory (the combined stdout/stderr of a sandboxed run would mix in warnings)."""
        reports = root / f".codeyard-review-{uuid.uuid4().hex}"
        reports.mkdir()  # a fresh name: nothing in the patch can have planted a link here
        report = reports / f"{tool}.json"
        inside = f"{SANDBOX_WORKDIR}/{reports.name}/{report.name}"
        # -I (isolated): the checked directory is not put on sys.path, so `-m ruff` is the
        # installed tool and not a `ruff.py` the patch added; PYTHON* variables are ignored too.
        command = ["python", "-I", "-m", tool, *options, *output_flag, inside, "--", *paths]
        outcome = await self.sandbox.run(root, command, self.limits)
        # The run could write the whole workdir, so what is at the report's path now is the
        # sandbox's choice: read it as untrusted, in a thread (a file read blocks the loop).
        try:
            data = await asyncio.to_thread(
                read_regular_file, reports, report.name, self.max_report_bytes
            )
            return json.loads(data)
        except (UnreadableFile, ValueError) as exc:
            tail = outcome.output.strip()[-2000:] or f"exit code {outcome.exit_code}"
            raise StaticToolFailed(f"{tool} could not check the change ({exc}):\n{tail}") from None


def read_regular_file(directory: Path, name: str, limit: int = MAX_REPORT_BYTES) -> bytes:
    """The bytes of the regular file `name` in `directory`, or `UnreadableFile`.

    Neither the directory nor the file may be a symlink (a link to a host file or /dev/zero);
    opening is non-blocking, so a FIFO fails the regular-file check instead of waiting for a
    writer; at most `limit` bytes are read. Blocking: call it in a thread from async code.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        folder = os.open(directory, flags | os.O_DIRECTORY)
    except OSError as exc:
        raise UnreadableFile(f"{directory.name} cannot be opened: {exc.strerror}") from None
    try:
        try:
            fd = os.open(name, flags, dir_fd=folder)
        except FileNotFoundError:
            raise UnreadableFile(f"no {name} was written") from None
        except OSError as exc:  # ELOOP: a symlink
            raise UnreadableFile(f"{name} cannot be opened: {exc.strerror}") from None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{name} is not a regular file")
        if info.st_size > limit:
            raise UnreadableFile(f"{name} is {info.st_size} bytes, over the limit of {limit}")
        data = stream.read(limit + 1)  # the size may have changed since fstat
    if len(data) > limit:
        raise UnreadableFile(f"{name} is over the limit of {limit} bytes")
    return data


@contextmanager
def _report_shape(tool: str) -> Iterator[None]:
    """A report that is JSON but not the tool's format fails the review like no report."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise StaticToolFailed(f"{tool}'s report is not in the expected format: {exc!r}") from None


def _has_ruff_config(root: Path) -> bool:
    if (root / "ruff.toml").is_file() or (root / ".ruff.toml").is_file():
        return True
    try:
        # The patch may have made pyproject.toml a symlink (to /dev/zero, to a host file).
        text = read_regular_file(root, "pyproject.toml", MAX_REPORT_BYTES).decode()
        pyproject: Mapping[str, Any] = tomllib.loads(text)
    except (UnreadableFile, ValueError):
        return False
    tool = pyproject.get("tool")
    return isinstance(tool, dict) and "ruff" in tool


def _relative(filename: str) -> str:
    """A tool's file name (absolute inside the sandbox, or `./`-prefixed) as a repo path."""
    path = PurePosixPath(posixpath.normpath(filename))
    return str(path.relative_to(SANDBOX_WORKDIR) if path.is_absolute() else path)
