"""A small real git repository (a calculator package with its tests) for the agents' tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.repositories import one_commit_repo

SAMPLE_FILES = {
    "README.md": "# calc\n\nA tiny calculator package.\n",
    "pyproject.toml": (
        '[project]\nname = "calc"\nversion = "0.1.0"\n\n'
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
    ),
    "calc/__init__.py": "from calc.ops import add, sub\n\n__all__ = ['add', 'sub']\n",
    "calc/ops.py": (
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "\n"
        "\n"
        "def sub(a: int, b: int) -> int:\n"
        "    return a - b\n"
    ),
    "tests/test_ops.py": (
        "from calc.ops import add, sub\n"
        "\n"
        "\n"
        "def test_add() -> None:\n"
        "    assert add(2, 3) == 5\n"
        "\n"
        "\n"
        "def test_sub() -> None:\n"
        "    assert sub(5, 3) == 2\n"
    ),
}


def _env() -> dict[str, str]:
    # The tests must not depend on (or be broken by) the machine's git configuration.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, input=stdin, capture_output=True, text=True, env=_env()
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def create_sample_repo(path: Path) -> Path:
    """A git repository at `path` with SAMPLE_FILES committed on `main`."""
    return one_commit_repo(path, SAMPLE_FILES, message="calc: add and sub")


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` outside .git, by relative path: a tree to compare with another."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }
