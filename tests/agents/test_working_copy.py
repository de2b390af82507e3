"""Reading the files a task names from a checkout."""

from __future__ import annotations

from pathlib import Path

from codeyard.agents.working_copy import read_files


def test_names_that_cannot_be_files_are_left_out_like_missing_ones(sample_repo: Path) -> None:
    # A 300-byte name made the path check itself fail with ENAMETOOLONG, failing the whole item.
    names = ["calc/ops.py", "a" * 300 + ".py", "x/" * 2100 + "y.py", "calc/new.py"]

    files = read_files(sample_repo, names)

    assert list(files) == ["calc/ops.py"]
    assert files["calc/ops.py"].startswith("def add(")
