"""Small real git repositories for tests: files written, then committed once on `main`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from codeyard.workspace.git import git


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Each file at its path relative to `root`, creating the directories on the way."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def deep_tree(top: Path, levels: int, file: str = "x.py") -> None:
    """`top`/d/d/.../d/`file` (holding "x = 1\\n"), `levels` directories deep: made one by one
    from descriptors, as pathlib's `mkdir(parents=True)` recurses (and paths pass PATH_MAX)."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    written = os.open(file, os.O_WRONLY | os.O_CREAT, dir_fd=fd)
    os.write(written, b"x = 1\n")
    os.close(written)
    os.close(fd)


def one_commit_repo(
    path: Path, files: Mapping[str, str] | None = None, *, message: str = "initial"
) -> Path:
    """`path` (made if missing) as a git repository on `main` whose one commit holds `files`
    and whatever `path` already held; `path` again."""
    path.mkdir(parents=True, exist_ok=True)
    write_files(path, files or {})
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return path
