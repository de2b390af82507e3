"""Scratch directories that sandboxed code wrote into are removed without following its links."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from codeyard.sandbox.protocol import SANDBOX_UID
from codeyard.sandbox.scratch import (
    remove_abandoned,
    remove_tree,
    scratch_directory,
    scratch_directory_async,
    walk,
)
from codeyard.sandbox.workdir_loan import WorkdirLoan
from tests.loop_turns import counting_turns

NOBODY = 65534

# What a sandboxed run with codeyard's uid can leave: a directory it may not write, holding a
# link to a file of that user. Run as that user (here: nobody), the removal must not touch the
# file. Python before 3.11.8's TemporaryDirectory chmods the file through the link.
AS_THE_SANDBOXED_USER = """
import os, stat, sys
from pathlib import Path
from codeyard.sandbox.scratch import scratch_directory
os.setgid(65534); os.setuid(65534)
target = Path(sys.argv[1])
with scratch_directory("codeyard-test-") as scratch:
    os.mkdir(scratch / "d")
    os.symlink(target, scratch / "d" / "link")
    os.chmod(scratch / "d", 0o500)
    left = scratch
print(oct(stat.S_IMODE(target.stat().st_mode)), left.exists())
"""


def test_a_tree_with_locked_directories_and_links_is_removed_and_the_links_not_followed(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file")
    outside.chmod(0o600)
    tree = tmp_path / "scratch"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "file").write_text("x")
    (tree / "a" / "link").symlink_to(outside)
    (tree / "a" / "dirlink").symlink_to(tmp_path)
    (tree / "a" / "b").chmod(0o000)
    (tree / "a").chmod(0o500)

    remove_tree(tree)

    assert not tree.exists()
    assert outside.read_text() == "the user's file"
    assert outside.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def home_of_nobody() -> Iterator[Path]:
    """A directory of the user nobody that nobody can reach (pytest's tmp_path is root's)."""
    home = Path(tempfile.mkdtemp(prefix="codeyard-nobody-"))
    home.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    try:
        yield home
    finally:
        shutil.rmtree(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to the user nobody, which needs root")
def test_the_sandboxed_users_own_files_keep_their_mode(home_of_nobody: Path) -> None:
    target = home_of_nobody / "notes.txt"
    target.write_text("private")
    target.chmod(0o600)
    os.chown(target, NOBODY, NOBODY)

    shown = subprocess.run(
        [sys.executable, "-c", AS_THE_SANDBOXED_USER, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"TMPDIR": str(home_of_nobody)},
        cwd=Path(__file__).resolve().parents[2],
    )

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["0o600", "False"]  # untouched, and the scratch is gone


def test_a_scratch_directory_is_gone_afterwards() -> None:
    with scratch_directory("codeyard-test-") as scratch:
        (scratch / "x").write_text("x")
    assert not scratch.exists()


def deep_tree(top: Path, depth: int, owner: int | None = None) -> None:
    """`depth` directories one in the next under `top`, made as sandboxed code makes them
    (each from the one before): deeper than Python's recursion limit, and than PATH_MAX.
    Given to `owner` (uid and gid), if given."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if owner is not None:
                os.fchown(inner, owner, owner)
            os.close(fd)
            fd = inner
        with open(os.open("file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as file:
            file.write("at the bottom")
    finally:
        os.close(fd)


def test_a_tree_of_any_depth_is_removed(tmp_path: Path) -> None:
    """os.walk and shutil.rmtree recursed once per level: a RecursionError left the checkout
    on disk, and replaced the result of the work that made it."""
    tree = tmp_path / "scratch"
    tree.mkdir()
    deep_tree(tree, 3000)

    remove_tree(tree)

    assert not tree.exists()


@pytest.fixture
def deep_place(tmp_path: Path) -> Iterator[Path]:
    """A directory for a deep tree, removed by `remove_tree` (pytest's own clean-up of old
    temporary directories would meet the recursion limit)."""
    place = tmp_path / "deep"
    place.mkdir()
    try:
        yield place
    finally:
        remove_tree(place)


def test_walk_goes_as_deep_as_paths_can_name(deep_place: Path) -> None:
    deep_tree(deep_place, 1500)  # 3,000 characters of path below it

    levels = [directory for directory, _, _ in walk(str(deep_place))]

    assert len(levels) == 1501
    assert levels[-1] == str(deep_place) + "/d" * 1500


@pytest.mark.skipif(os.geteuid() != 0, reason="lending a workdir chowns it, which needs root")
def test_a_lent_workdir_of_any_depth_is_taken_back(deep_place: Path) -> None:
    """(the docker backend's: the command left a tree too deep to walk back)"""
    workdir = deep_place / "workdir"
    workdir.mkdir()
    (workdir / "made").mkdir()
    loan = WorkdirLoan(workdir)
    loan.lend()
    deep_tree(workdir / "made", 3000, owner=SANDBOX_UID)

    loan.give_back()

    assert {(workdir / "made").stat().st_uid, os.stat(workdir / "made/d/d/d").st_uid} == {0}
    # (below what a path can name, the rest stays the sandbox user's, for `remove_tree`)


async def test_an_async_scratch_directory_is_removed_with_the_event_loop_running() -> None:
    """The suite after a merge ran in a scratch directory removed on the coordinator's event
    loop: a suite that left many files stalled it for seconds (heartbeats, leases, results)."""
    async with counting_turns() as turns:
        async with scratch_directory_async("codeyard-test-") as scratch:
            locked = scratch / "locked"
            locked.mkdir()
            (locked / "file").write_text("x")
            locked.chmod(0o500)  # as sandboxed code may leave it
            before = turns.count
        during_removal = turns.count - before

    assert not scratch.exists()
    assert during_removal > 0  # the loop turned while the tree was removed


def test_a_service_starting_removes_what_killed_processes_left(tmp_path: Path) -> None:
    """A worker killed in the middle of a task (scaled down, say) left its copy of the
    repository in the temporary directory, each time: nothing ever removed it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = Path(tempfile.gettempdir())
    prefix = f"codeyard-test-{os.getpid()}-"
    abandoned = root / f"{prefix}{dead.pid}-abc"
    (abandoned / "locked").mkdir(parents=True)
    (abandoned / "locked" / "file").write_text("x")
    (abandoned / "locked").chmod(0o500)
    linked = root / f"{prefix}{dead.pid}-link"
    linked.symlink_to(tmp_path)
    kept = [
        root / f"{prefix}{os.getpid()}-mine",  # a running process's
        root / f"{prefix}suite-{dead.pid}-x",  # another prefix's
        root / f"{prefix}{dead.pid}",  # not one of these names
    ]
    for path in kept:
        path.mkdir()
    try:
        with scratch_directory(prefix) as scratch:
            assert scratch.name.startswith(f"{prefix}{os.getpid()}-")
            assert remove_abandoned(prefix) == 1
            assert scratch.exists()
        assert not abandoned.exists()
        assert linked.is_symlink()  # a link is not followed, nor taken for a directory
        assert all(path.exists() for path in kept)
    finally:
        linked.unlink()
        for path in kept:
            path.rmdir()
