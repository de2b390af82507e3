"""Which paths from an LLM may be touched inside a working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.safe_paths import UnsafePath, workspace_path


def test_a_plain_relative_path_resolves_inside_the_root(sample_repo: Path) -> None:
    assert workspace_path(sample_repo, "calc/ops.py") == sample_repo.resolve() / "calc/ops.py"
    # Paths that do not exist yet are fine: edits create them.
    assert workspace_path(sample_repo, "calc/new/deep.py").is_relative_to(sample_repo.resolve())


def test_even_a_symlink_that_stays_inside_is_refused(sample_repo: Path) -> None:
    # Writing through it would change calc/ops.py while the edit names another file.
    (sample_repo / "ops_link.py").symlink_to(sample_repo / "calc/ops.py")

    with pytest.raises(UnsafePath, match=r"'ops_link\.py' is a symlink"):
        workspace_path(sample_repo, "ops_link.py")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "the path is empty"),
        ("calc/\0ops.py", "NUL"),
        ("calc/", "not in normal form; write 'calc'"),
        ("calc/./ops.py", "not in normal form; write 'calc/ops.py'"),
        ("a/../../b", "the path contains '..'"),
        ("sub/.Git/HEAD", "the path is inside .git"),
    ],
)
def test_malformed_paths_are_refused(sample_repo: Path, path: str, reason: str) -> None:
    with pytest.raises(UnsafePath) as caught:
        workspace_path(sample_repo, path)

    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a" * 256, "is 256 bytes long; a file or directory name can be at most 255 bytes"),
        ("calc/" + "\u00e9" * 128, "is 256 bytes long"),  # bytes, not characters, count
        ("x/" * 2100 + "y.py", "the path is 4204 bytes long; here it can be at most"),
        ("d/" * 100 + "y.py", "the path is 101 names deep; it can be at most 100"),
    ],
    ids=["256 ASCII letters", "128 two-byte letters", "a 4204-byte path", "101 names deep"],
)
def test_paths_beyond_the_file_systems_limits_are_refused(
    sample_repo: Path, path: str, reason: str
) -> None:
    # The file system would answer ENAMETOOLONG, an OSError no caller expects from a path check.
    with pytest.raises(UnsafePath) as caught:
        workspace_path(sample_repo, path)

    assert reason in str(caught.value)


def test_the_longest_name_is_fine(sample_repo: Path) -> None:
    assert workspace_path(sample_repo, "a" * 255).name == "a" * 255


def test_the_deepest_path_is_fine(sample_repo: Path) -> None:
    assert workspace_path(sample_repo, "d/" * 99 + "y.py").name == "y.py"


def test_a_path_that_is_not_utf8_text_is_refused(sample_repo: Path) -> None:
    with pytest.raises(UnsafePath, match="not valid UTF-8"):
        workspace_path(sample_repo, "calc/\ud800.py")
