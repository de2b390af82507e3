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

from codeyard.sandbox.scratch import remove_tree, scratch_directory

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
