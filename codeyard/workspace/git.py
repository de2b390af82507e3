"""Running git, with errors that say what failed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Commits made by codeyard are authored by it, whatever the machine's git config says.
IDENTITY = {
    "GIT_AUTHOR_NAME": "codeyard",
    "GIT_AUTHOR_EMAIL": "codeyard@localhost",
    "GIT_COMMITTER_NAME": "codeyard",
    "GIT_COMMITTER_EMAIL": "codeyard@localhost",
}


class GitError(RuntimeError):
    def __init__(self, args: tuple[str, ...], output: str) -> None:
        self.output = output
        super().__init__(f"git {' '.join(args)} failed: {output.strip()[-2000:]}")


def git(
    repo: Path, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
) -> str:
    """Run `git -C repo args...`; its stdout, or `GitError` with what git said."""
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=os.environ | IDENTITY | {"GIT_TERMINAL_PROMPT": "0"},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise GitError(args, result.stderr + result.stdout)
    return result.stdout


def checkout(source: Path, destination: Path, rev: str = "HEAD") -> Path:
    """A private working copy of `source` at `rev` (any revision of `source`: a branch, a tag,
    a commit), sharing no files with it."""
    commit = git(source, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(source), str(destination)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    git(destination, "checkout", "--quiet", "--detach", commit)
    return destination
