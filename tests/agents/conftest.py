from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents.sample_repo import create_sample_repo


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    """A fresh git repository of a tiny calculator package with passing tests."""
    return create_sample_repo(tmp_path / "calc")
