"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codeyard.workspace.git import git
from tests.e2e.stack import FIXTURE


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "calc"
    shutil.copytree(FIXTURE, path)
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    return path
