"""A short picture of a repository for the planner: its files, key files and test command.

Only names are walked; of the contents, only a few small key files are read, and only up to a
cap, so a large repository costs a directory walk, not a read of everything.
"""

from __future__ import annotations

import configparser
import json
import os
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from codeyard.agents.prompt_context import fenced
from codeyard.agents.safe_paths import UnsafePath, workspace_path
from codeyard.sandbox.scratch import walk

MAX_FILES = 300
MAX_KEY_FILE_CHARS = 4_000
# Config files are parsed whole to detect the test command; past this size they are not.
MAX_CONFIG_BYTES = 1_000_000

# Directories that are tooling, not the project: version control, dependencies, caches.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".tox",
        ".nox",
        ".cache",
        ".venv",
        "venv",
    }
)
KEY_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "package.json", "pytest.ini", "tox.ini")
PYTEST = "python -m pytest"  # `-m` puts the repository root on sys.path, as tests often expect
NPM_TEST = "npm test"
# What `npm init` writes as the test script: a placeholder that always fails.
NPM_PLACEHOLDER = "no test specified"


@dataclass(frozen=True)
class KeyFile:
    path: str
    text: str  # at most the cap's worth of the file
    truncated: bool


@dataclass(frozen=True)
class RepoSummary:
    files: tuple[str, ...]  # relative paths, sorted; the shallowest ones when capped
    more_files: int  # files left out by the cap
    key_files: tuple[KeyFile, ...]
    test_command: str  # the run's, else the detected one; "" when there is neither

    def render(self) -> str:
        """The summary as markdown for the planner's prompt."""
        listing = "\n".join(self.files) if self.files else "(no files)"
        if self.more_files:
            listing += f"\n... and {self.more_files} more"
        sections = [
            f"### Files\n\n{fenced(listing)}",
            f"### Test command\n\n{self.test_command or '(none detected)'}",
        ]
        for key_file in self.key_files:
            text = key_file.text + ("\n[... truncated ...]" if key_file.truncated else "")
            sections.append(f"### {key_file.path}\n\n{fenced(text)}")
        return "\n\n".join(sections)


def summarize_repo(
    root: Path,
    *,
    test_command: str = "",
    max_files: int = MAX_FILES,
    max_key_file_chars: int = MAX_KEY_FILE_CHARS,
) -> RepoSummary:
    """`test_command` is the run's (`codeyard run --test-command`), which the tester will run:
    the summary names it instead of what detection would guess ("": detected)."""
    root = root.resolve(strict=True)
    files, more = _list_files(root, max_files)
    key_files = tuple(
        key_file
        for name in (*_readme_names(root), *KEY_FILES)
        if (key_file := _read_key_file(root, name, max_key_file_chars)) is not None
    )
    return RepoSummary(
        files=files,
        more_files=more,
        key_files=key_files,
        test_command=test_command or detect_test_command(root),
    )


def detect_test_command(root: Path) -> str:
    """`python -m pytest` for pytest configuration, `npm test` for a package.json test script,
    `python -m pytest` for a tests/ directory of Python files, else ""."""
    if _has_pytest_config(root):
        return PYTEST
    package = _read_config(root, "package.json")
    if package is not None:
        try:
            scripts = json.loads(package).get("scripts", {})
        except (ValueError, AttributeError, RecursionError):  # (nested deeper than Python goes)
            scripts = {}
        test_script = scripts.get("test") if isinstance(scripts, dict) else None
        if isinstance(test_script, str) and NPM_PLACEHOLDER not in test_script:
            return NPM_TEST
    for name in ("tests", "test"):
        directory = root / name
        is_real_dir = directory.is_dir() and not directory.is_symlink()
        if is_real_dir and _holds_python(directory):
            return PYTEST
    return ""


def _holds_python(directory: Path) -> bool:
    """Whether a Python file is anywhere under `directory`, however deep (`rglob` recursed)."""
    return any(name.endswith(".py") for _, _, files in walk(str(directory)) for name in files)


def _has_pytest_config(root: Path) -> bool:
    if _read_config(root, "pytest.ini") is not None or (root / "conftest.py").is_file():
        return True
    pyproject = _read_config(root, "pyproject.toml")
    if pyproject is not None:
        try:
            tool = tomllib.loads(pyproject).get("tool", {})
        except (tomllib.TOMLDecodeError, RecursionError):
            tool = {}
        if isinstance(tool, dict) and "pytest" in tool:
            return True
    for name, section in (("setup.cfg", "tool:pytest"), ("tox.ini", "pytest")):
        text = _read_config(root, name)
        if text is not None:
            parser = configparser.ConfigParser(interpolation=None)
            try:
                parser.read_string(text)
            except configparser.Error:
                continue
            if parser.has_section(section):
                return True
    return False


def _list_files(root: Path, limit: int) -> tuple[tuple[str, ...], int]:
    """Up to `limit` files, breadth first (top-level files say most about a project), and how
    many more there are."""
    kept: list[str] = []
    more = 0
    pending: deque[tuple[Path, str]] = deque([(root, "")])
    while pending:
        directory, prefix = pending.popleft()
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable: leave it out rather than fail the summary
        for entry in entries:
            path = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if not _skipped(entry):
                    pending.append((Path(entry.path), path + "/"))
            elif len(kept) < limit:
                kept.append(path)
            else:
                more += 1
    return tuple(sorted(kept)), more


def _skipped(directory: os.DirEntry[str]) -> bool:
    if directory.name in SKIPPED_DIRS or directory.name.endswith(".egg-info"):
        return True
    # A virtualenv under any name is recognised by its marker file.
    return os.path.exists(os.path.join(directory.path, "pyvenv.cfg"))


def _readme_names(root: Path) -> list[str]:
    readmes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.name.casefold().startswith("readme") and entry.is_file(follow_symlinks=False)
    )
    return readmes[:1]


def _safe_file(root: Path, name: str) -> Path | None:
    """`root/name` if it is a regular file reached through no symlink: a repository's README
    may be a link to a secret elsewhere on the machine, and the summary goes to an LLM."""
    try:
        path = workspace_path(root, name)
    except UnsafePath:
        return None
    return path if path.is_file() else None


def _read_key_file(root: Path, name: str, max_chars: int) -> KeyFile | None:
    path = _safe_file(root, name)
    if path is None:
        return None
    with path.open("rb") as stream:
        # A UTF-8 character is at most 4 bytes; one more char tells whether there is more.
        data = stream.read(4 * (max_chars + 1))
    text = data.decode("utf-8", "replace")
    return KeyFile(path=name, text=text[:max_chars], truncated=len(text) > max_chars)


def _read_config(root: Path, name: str) -> str | None:
    path = _safe_file(root, name)
    if path is None or path.stat().st_size > MAX_CONFIG_BYTES:
        return None
    return path.read_text("utf-8", "replace")
