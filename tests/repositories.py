"""Small real git repositories for tests: files written, then committed once on `main`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from codeyard.workspace.git import git


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Each file at its path relative to `root`, creating the directories on the way."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


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
