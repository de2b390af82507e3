"""Fixtures of the reviewer plugin tests: the sandbox, a sample repository, and patches of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.sandbox import BwrapSandbox
from tests.agents.sample_repo import create_sample_repo, git
from tests.repositories import write_files


@pytest.fixture(scope="session")
def sandbox(bwrap_sandbox: BwrapSandbox) -> BwrapSandbox:
    """The static reviewer runs its tools under bubblewrap (tests/conftest.py checks it)."""
    return bwrap_sandbox


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    """A fresh git repository of a tiny calculator package with passing tests."""
    return create_sample_repo(tmp_path / "calc")


def patch_of(repo: Path, files: dict[str, str]) -> str:
    """The diff that writes `files` into `repo`, which is left as it was."""
    write_files(repo, files)
    git(repo, "add", "--all")
    diff = git(repo, "diff", "--cached")
    git(repo, "reset", "--quiet", "--hard")
    return diff


def commit(repo: Path, files: dict[str, str]) -> None:
    write_files(repo, files)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", "more")
