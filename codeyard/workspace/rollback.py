"""`rollback`: move a run's result branch back to the commit of one of its tasks.

Only the ref `codeyard/<run>` moves (with the old value as a check, so a concurrent change is
not overwritten); no working tree is touched, and a branch checked out in any worktree of the
repository (or being rebased or bisected there, which git counts as checked out) is refused
rather than moved under someone's feet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codeyard.workspace.git import GitError, git
from codeyard.workspace.integration import TASK_TRAILER, result_branch

_FIELD = "\x1f"
_RECORD = "\x1e"


class RollbackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True)
class TaskCommit:
    commit: Commit
    task_id: str
    attempt: int


@dataclass(frozen=True)
class Rollback:
    branch: str
    old: Commit
    new: Commit
    task: TaskCommit
    dropped: tuple[Commit, ...]  # newest first

    @property
    def moved(self) -> bool:
        return self.old.sha != self.new.sha


def task_commits(repo: Path, run_id: str) -> list[TaskCommit]:
    """The commits on the run's result branch that carry one of its tasks, newest first."""
    ref = _branch_ref(repo, run_id)
    log = git(
        repo,
        "log",
        f"--format=%H{_FIELD}%s{_FIELD}%(trailers:key={TASK_TRAILER},valueonly){_RECORD}",
        ref,
        "--",
    )
    found: list[TaskCommit] = []
    for record in filter(str.strip, log.split(_RECORD)):
        sha, subject, trailers = record.strip("\n").split(_FIELD, 2)
        for value in trailers.split():
            owner, _, rest = value.partition("/")
            task_id, _, attempt = rest.rpartition("/")
            if owner == run_id and task_id and attempt.isdigit():
                found.append(TaskCommit(Commit(sha, subject), task_id, int(attempt)))
    return found


def rollback(repo: Path, run_id: str, task_id: str) -> Rollback:
    """Reset `codeyard/<run_id>` to the commit that merged `task_id`; what moved is returned."""
    branch = result_branch(run_id)
    ref = _branch_ref(repo, run_id)
    held = _held_by_worktree(repo, ref)
    if held is not None:
        raise RollbackError(f"{branch} {held} (rollback never touches a working tree)")
    commits = task_commits(repo, run_id)
    target = next((commit for commit in commits if commit.task_id == task_id), None)
    if target is None:
        known = ", ".join(dict.fromkeys(commit.task_id for commit in reversed(commits)))
        raise RollbackError(
            f"no commit of task {task_id!r} on {branch}"
            + (f" (tasks with commits, oldest first: {known})" if known else " (it has none)")
        )
    old = git(repo, "rev-parse", ref).strip()
    dropped = _commits_between(repo, target.commit.sha, old)
    if dropped:
        try:
            # the old value makes this a compare-and-swap: a branch moved meanwhile is kept
            message = f"codeyard rollback {run_id} --to {task_id}"
            git(repo, "update-ref", "-m", message, ref, target.commit.sha, old)
        except GitError as exc:
            detail = exc.output.strip()
            raise RollbackError(f"{branch} changed while rolling back: {detail}") from None
    old_commit = Commit(old, _subject(repo, old))
    return Rollback(branch, old_commit, target.commit, target, dropped)


def _branch_ref(repo: Path, run_id: str) -> str:
    ref = f"refs/heads/{result_branch(run_id)}"
    if not repo.is_dir() or not git(repo, "rev-parse", "--git-dir", check=False).strip():
        raise RollbackError(f"{repo} is not a git repository")
    if not git(repo, "rev-parse", "--verify", "--quiet", ref, check=False).strip():
        raise RollbackError(
            f"no branch {result_branch(run_id)} in {repo}: only a run that ended done delivers "
            "one (a failed or cancelled run's merged tasks are in its integration clone: see "
            "`codeyard cancel --help`)"
        )
    return ref


def _held_by_worktree(repo: Path, ref: str) -> str | None:
    """How a worktree holds `ref`, if one does, by git's own rule (`branch_checked_out`): its
    current branch, or the branch it is rebasing or bisecting. HEAD is detached meanwhile, but
    `git rebase --continue` and `git bisect reset` go back to the branch and expect it where it
    was: moved under it, a rebase cannot finish (git updates the branch only from its old value)."""
    listing = git(repo, "worktree", "list", "--porcelain").splitlines()
    worktree = ""
    for line in listing:
        if line.startswith("worktree "):
            worktree = line.removeprefix("worktree ")
        elif line == f"branch {ref}":
            return f"is checked out in {worktree}; switch that worktree to another branch first"
    for worktree, git_dir in _worktree_git_dirs(repo, listing):
        rebasing = ("rebase-merge/head-name", "rebase-apply/head-name")
        if any(_names_branch(git_dir / state, ref) for state in rebasing):
            return f"is being rebased in {worktree}; finish or abort that rebase first"
        if _names_branch(git_dir / "BISECT_START", ref):
            return f"is being bisected in {worktree}; end that bisect first (git bisect reset)"
    return None


def _worktree_git_dirs(repo: Path, listing: list[str]) -> list[tuple[str, Path]]:
    """Each worktree (as listed) and its git dir, where git keeps a rebase's or a bisect's state.
    Read from the repository's common dir, so a worktree whose directory is gone still counts,
    as it does for git."""
    common = git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir").strip()
    listed = [line.removeprefix("worktree ") for line in listing if line.startswith("worktree ")]
    main = listed[0] if listed else str(repo)
    found = [(main, Path(common))]
    linked = Path(common) / "worktrees"
    for git_dir in sorted(linked.iterdir()) if linked.is_dir() else ():
        try:  # `gitdir` names the worktree's `.git` file
            worktree = str(Path((git_dir / "gitdir").read_text().strip()).parent)
        except OSError:
            worktree = str(git_dir)
        found.append((worktree, git_dir))
    return found


def _names_branch(state_file: Path, ref: str) -> bool:
    """Whether a rebase's `head-name` or a bisect's `BISECT_START` names the branch `ref`: git
    writes the full ref in the one and the short name in the other, and reads both either way."""
    try:
        named = state_file.read_text().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return named.removeprefix("refs/heads/") == ref.removeprefix("refs/heads/")


def _commits_between(repo: Path, base: str, tip: str) -> tuple[Commit, ...]:
    log = git(repo, "log", f"--format=%H{_FIELD}%s", f"{base}..{tip}", "--")
    return tuple(Commit(*line.split(_FIELD, 1)) for line in log.splitlines() if _FIELD in line)


def _subject(repo: Path, sha: str) -> str:
    return git(repo, "log", "-1", "--format=%s", sha).strip()
