"""Reading the files a task names from a checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.working_copy import (
    CUT_NOTE,
    MAX_FILE_CHARS,
    MAX_TOTAL_CHARS,
    NOT_SHOWN,
    read_files,
    shown_whole,
    working_copy,
)
from codeyard.bus.worker import GiveUp
from codeyard.reviewers import patched_checkout
from codeyard.schemas import Patch, RepoRef, ReviewRequest, TaskSpec
from tests.loop_turns import counting_turns


def test_names_that_cannot_be_files_are_left_out_like_missing_ones(sample_repo: Path) -> None:
    # A 300-byte name made the path check itself fail with ENAMETOOLONG, failing the whole item.
    names = ["calc/ops.py", "a" * 300 + ".py", "x/" * 2100 + "y.py", "calc/new.py"]

    files = read_files(sample_repo, names)

    assert list(files) == ["calc/ops.py"]
    assert files["calc/ops.py"].startswith("def add(")


def test_only_the_start_of_a_large_file_is_read_and_it_says_so(sample_repo: Path) -> None:
    """Cut silently, a file was taken for whole: a model asked for "the complete content" of
    a file wrote back its start alone, deleting the rest."""
    (sample_repo / "big.txt").write_text("é" * (MAX_FILE_CHARS + 10))
    (sample_repo / "exact.txt").write_text("é" * MAX_FILE_CHARS)

    files = read_files(sample_repo, ["big.txt", "exact.txt"])

    assert files["big.txt"] == "é" * MAX_FILE_CHARS + CUT_NOTE
    assert files["exact.txt"] == "é" * MAX_FILE_CHARS  # whole: nothing said
    assert shown_whole(files) == {"exact.txt"}


def test_files_past_what_a_prompt_holds_are_named_not_shown(sample_repo: Path) -> None:
    names = [f"f{n}.txt" for n in range(MAX_TOTAL_CHARS // MAX_FILE_CHARS + 2)]
    for name in names:
        (sample_repo / name).write_text("x" * MAX_FILE_CHARS)

    files = read_files(sample_repo, [*names, "missing.txt"])

    assert list(files) == names
    assert files[names[-1]] == NOT_SHOWN
    assert shown_whole(files) == set(names[:-1])


async def test_the_event_loop_keeps_running_while_a_copy_is_made(sample_repo: Path) -> None:
    # A worker's heartbeats run on its event loop: a copy made on the loop itself stopped them,
    # and an item whose copy outlasted its ack wait was redelivered while it ran.
    async with counting_turns() as turns:
        before = turns.count
        async with working_copy(RepoRef(path=str(sample_repo))) as root:
            during_copy = turns.count - before
            copied = (root / "calc" / "ops.py").is_file()

    assert copied
    assert during_copy > 0
    assert not root.exists()


async def test_a_plain_with_on_the_event_loop_is_refused(sample_repo: Path) -> None:
    """Refused as work that cannot succeed (the same code does the same on every delivery: it
    was retried five times), naming what to write instead, in a plugin's terms too."""
    copy = working_copy(RepoRef(path=str(sample_repo)))
    with pytest.raises(GiveUp, match=r"in an `async def`, use `async with working_copy"), copy:
        pass
    request = ReviewRequest(
        task=TaskSpec(id="t", title="t"), patch=Patch(text=""), repo=RepoRef(path=str(sample_repo))
    )
    checkout = patched_checkout(request)
    with pytest.raises(GiveUp, match=r"use `async with patched_checkout\(...\)`"), checkout:
        pass


def test_a_plain_with_off_the_event_loop_copies_and_cleans_up(sample_repo: Path) -> None:
    with working_copy(RepoRef(path=str(sample_repo))) as root:
        assert (root / "calc" / "ops.py").is_file()
    assert not root.exists()


async def test_a_repository_not_on_this_disk_is_given_up(tmp_path: Path) -> None:
    with pytest.raises(GiveUp, match="not on this machine's disk"):
        async with working_copy(RepoRef(path=str(tmp_path / "gone"))):
            pass
