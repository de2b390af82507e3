"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.stack import FIXTURE
from tests.repositories import one_commit_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "calc"
    shutil.copytree(FIXTURE, path)
    return one_commit_repo(path)
