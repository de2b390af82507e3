"""Running git, with errors that say what failed.

Whatever a config says (the system's, the user's ~/.gitconfig, a repository's own), the git
commands codeyard runs (`git`, `checkout`) run no hook (`core.hooksPath` or a repository's
`hooks/`), copy no hook or anything else from a template (`init.templateDir`) into a clone or a
new repository, and run no fsmonitor and no signing program. A hook runs what it likes from the
working tree it runs in, and in the integration clone that is the code a task's patch wrote: a
global pre-commit hook would run it on the host, outside the sandbox. A global `commit.gpgSign`
would fail every merge. Only these settings are overridden (on the command line, which wins
over every file): everything else the config files say still holds, such as the compose image's
system-wide `safe.directory '*'` (deploy/Dockerfile), without which git refuses a repository
another uid owns, or the filters a repository's attributes name (git-lfs): programs the host's
owner installed, which run on the code, not the code itself.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

# Commits made by codeyard are authored by it, whatever the machine's git config says.
IDENTITY = {
    "GIT_AUTHOR_NAME": "codeyard",
    "GIT_AUTHOR_EMAIL": "codeyard@localhost",
    "GIT_COMMITTER_NAME": "codeyard",
    "GIT_COMMITTER_EMAIL": "codeyard@localhost",
}
# Settings of every command that would otherwise let a config run a program (see above).
# /dev/null holds no hooks; `log.showSignature` would run gpg on every `git log`.
NO_PROGRAMS = (
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "core.fsmonitor=false"),
    *("-c", "commit.gpgSign=false"),
    *("-c", "tag.gpgSign=false"),
    *("-c", "log.showSignature=false"),
)
# An empty template directory: a clone or init copies nothing into its .git (no hooks), whatever
# `init.templateDir` says; the environment variable comes before the config. Where git-lfs is
# installed, a checkout leaves its pointers as they are instead of fetching from the server
# the repository's `.lfsconfig` names.
_ENVIRONMENT = {
    **IDENTITY,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_TEMPLATE_DIR": "",
    "GIT_LFS_SKIP_SMUDGE": "1",
}
# Variables of the caller's environment that would point git at another repository than the
# one named (`codeyard run` started from a hook, or with GIT_DIR exported).
_ELSEWHERE = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
)


class GitError(RuntimeError):
    def __init__(self, args: tuple[str, ...], output: str) -> None:
        self.output = output
        super().__init__(f"git {' '.join(args)} failed: {output.strip()[-2000:]}")


def git(
    repo: Path, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
) -> str:
    """Run `git -C repo args...`, no config running any program (see above); its stdout, or
    `GitError` with what git said."""
    result = subprocess.run(
        ["git", *NO_PROGRAMS, "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=git_environment(),
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise GitError(args, result.stderr + result.stdout)
    return result.stdout


def git_environment() -> dict[str, str]:
    """The environment git runs in: the caller's, without what would point git at another
    repository, committing as codeyard, never prompting, copying no templates, fetching no
    git-lfs content."""
    return {k: v for k, v in os.environ.items() if k not in _ELSEWHERE} | _ENVIRONMENT


@functools.cache
def git_version() -> tuple[int, ...]:
    """The installed git's version, as numbers: (2, 39, 5)."""
    told = git(Path("/"), "version")  # "git version 2.39.5", maybe more after it
    found = re.search(r"\d+(\.\d+)*", told)
    return tuple(int(part) for part in found.group().split(".")) if found else ()


def checkout(source: Path, destination: Path, rev: str = "HEAD") -> Path:
    """A private working copy of `source` at `rev` (any revision of `source`: a branch, a tag,
    a commit), sharing no files with it."""
    commit = git(source, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    git(
        destination.parent,
        "clone",
        "--quiet",
        "--no-hardlinks",
        "--no-checkout",
        str(source),
        str(destination),
    )
    fetch_if_missing(destination, commit)
    git(destination, "checkout", "--quiet", "--detach", commit)
    return destination


def fetch_if_missing(clone: Path, commit: str, timeout: float = 300) -> None:
    """Make sure `clone` has `commit` of its origin. A clone of a local repository copies all
    its objects; but git clones a shallow one (`git clone --depth`, or a snapshot cache holding
    one) as a remote one, taking only its branches, and `commit` may be on none of them (a
    snapshot cache's `refs/snapshots/`, an integration head taken off again)."""
    if git(clone, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False):
        return
    # --update-shallow: the commit's history ends where the origin's does
    git(
        clone,
        "fetch",
        "--quiet",
        "--no-tags",
        "--update-shallow",
        "origin",
        commit,
        timeout=timeout,
    )
