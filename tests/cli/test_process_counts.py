"""Counts of processes and of work at once have upper bounds: a slip of the keyboard
(`--coders 800`) is refused before anything starts, instead of taking the machine down."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import codeyard


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (("up", "--coders", "800"), 256),
        (("worker", "coder", "--concurrency", "20000"), 10_000),
        (("coordinator", "--capacity", "1000000"), 100_000),
        (("bench", "humaneval", "--concurrency", "1000"), 256),
    ],
)
def test_a_count_over_its_bound_is_refused_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], bound: int
) -> None:
    env = {"CODEYARD_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    refused = codeyard(env, *args, timeout=60)
    assert refused.returncode == 2
    said = " ".join(refused.stderr.replace("│", " ").split())
    assert f"Invalid value for '{args[-2]}': Input should be less than or equal to {bound}" in said
    assert not (tmp_path / "data").exists()
