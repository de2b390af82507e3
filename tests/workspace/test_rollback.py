"""rollback: the result branch moves back to a task's commit; no working tree is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.workspace.git import git
from codeyard.workspace.integration import task_trailer
from codeyard.workspace.rollback import RollbackError, rollback, task_commits
from tests.repositories import one_commit_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A user's repository on main, with a result branch `codeyard/r1` of tasks a, b, c."""
    path = one_commit_repo(tmp_path / "user", {"app.py": "x = 1\n"})
    git(path, "branch", "codeyard/r1")
    clone = tmp_path / "integration"
    git(tmp_path, "clone", "-q", "-b", "codeyard/r1", str(path), clone.name)
    for task_id, attempt in (("a", 1), ("b", 2), ("c", 1)):
        (clone / f"{task_id}.txt").write_text(f"{task_id}\n")
        git(clone, "add", f"{task_id}.txt")
        message = f"task {task_id}\n\nmentions {task_trailer('r1', 'zz', 9)} in passing"
        git(clone, "commit", "-q", "-m", message, "-m", task_trailer("r1", task_id, attempt))
    git(path, "fetch", "-q", str(clone), "+HEAD:refs/heads/codeyard/r1")
    (path / "app.py").write_text("x = 2  # the user's uncommitted work\n")
    return path


def subjects(repo: Path, ref: str) -> list[str]:
    return git(repo, "log", "--format=%s", ref).splitlines()


def test_task_commits_are_read_from_trailers(repo: Path) -> None:
    found = [(commit.task_id, commit.attempt) for commit in task_commits(repo, "r1")]
    assert found == [("c", 1), ("b", 2), ("a", 1)]  # not "zz": mentioned in a body only


def test_rollback_moves_only_the_branch(repo: Path) -> None:
    before = git(repo, "rev-parse", "codeyard/r1").strip()
    moved = rollback(repo, "r1", "a")

    assert moved.moved
    assert moved.old.sha == before
    assert moved.new.subject == "task a"
    assert [commit.subject for commit in moved.dropped] == ["task c", "task b"]
    assert subjects(repo, "codeyard/r1") == ["task a", "initial"]
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert (repo / "app.py").read_text() == "x = 2  # the user's uncommitted work\n"
    assert not (repo / "a.txt").exists()
    assert "codeyard rollback r1 --to a" in git(repo, "reflog", "show", "codeyard/r1")


def test_rollback_to_the_last_task_changes_nothing(repo: Path) -> None:
    before = git(repo, "rev-parse", "codeyard/r1").strip()
    same = rollback(repo, "r1", "c")
    assert not same.moved
    assert same.dropped == ()
    assert git(repo, "rev-parse", "codeyard/r1").strip() == before


def test_unknown_task_or_branch_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(RollbackError, match=r"no commit of task 'x' on codeyard/r1.*a, b, c"):
        rollback(repo, "r1", "x")
    with pytest.raises(RollbackError, match="no branch codeyard/r2"):
        rollback(repo, "r2", "a")
    with pytest.raises(RollbackError, match="not a git repository"):
        rollback(tmp_path / "nowhere", "r1", "a")


def test_a_checked_out_result_branch_is_refused(repo: Path, tmp_path: Path) -> None:
    git(repo, "stash", "-q")
    git(repo, "checkout", "-q", "codeyard/r1")
    with pytest.raises(RollbackError, match="checked out"):
        rollback(repo, "r1", "a")
    git(repo, "checkout", "-q", "main")

    other = tmp_path / "other-worktree"
    git(repo, "worktree", "add", "-q", str(other), "codeyard/r1")
    head = git(repo, "rev-parse", "codeyard/r1").strip()
    with pytest.raises(RollbackError, match=f"checked out in {other}"):
        rollback(repo, "r1", "b")
    assert git(repo, "rev-parse", "codeyard/r1").strip() == head


def test_a_result_branch_being_rebased_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git detaches HEAD while it rebases, yet counts the branch as checked out: moved under the
    rebase, `git rebase --continue` could not update it at the end."""
    other = tmp_path / "other-worktree"
    git(repo, "worktree", "add", "-q", "--detach", str(other), "main")
    monkeypatch.setenv("GIT_SEQUENCE_EDITOR", "sed -i 1s/^pick/edit/")  # stops at task a
    git(other, "rebase", "-q", "-i", "main", "codeyard/r1")
    assert "\ndetached\n" in git(repo, "worktree", "list", "--porcelain")
    head = git(repo, "rev-parse", "codeyard/r1").strip()

    with pytest.raises(RollbackError, match=f"codeyard/r1 is being rebased in {other}; finish"):
        rollback(repo, "r1", "a")
    assert git(repo, "rev-parse", "codeyard/r1").strip() == head
    git(other, "rebase", "--continue")
    assert subjects(repo, "codeyard/r1") == ["task c", "task b", "task a", "initial"]


def test_a_result_branch_stopped_in_an_apply_rebase_is_refused(repo: Path) -> None:
    """`git rebase --apply` keeps its state in rebase-apply/, here stopped by a conflict."""
    git(repo, "stash", "-q")
    git(repo, "checkout", "-q", "--detach", "main")
    (repo / "a.txt").write_text("someone else's a\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "conflicts with task a")
    git(repo, "rebase", "--apply", "HEAD", "codeyard/r1", check=False)
    assert (repo / ".git" / "rebase-apply" / "head-name").is_file()
    head = git(repo, "rev-parse", "codeyard/r1").strip()

    with pytest.raises(RollbackError, match=f"codeyard/r1 is being rebased in {repo}"):
        rollback(repo, "r1", "a")
    assert git(repo, "rev-parse", "codeyard/r1").strip() == head


def test_a_result_branch_being_bisected_is_refused(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-worktree"
    git(repo, "worktree", "add", "-q", str(other), "codeyard/r1")
    git(other, "bisect", "start")
    git(other, "bisect", "bad")
    git(other, "bisect", "good", "main")
    assert "\ndetached\n" in git(repo, "worktree", "list", "--porcelain")
    head = git(repo, "rev-parse", "codeyard/r1").strip()

    with pytest.raises(RollbackError, match=f"codeyard/r1 is being bisected in {other}"):
        rollback(repo, "r1", "a")
    assert git(repo, "rev-parse", "codeyard/r1").strip() == head
    git(other, "bisect", "reset")
    assert git(other, "branch", "--show-current").strip() == "codeyard/r1"
