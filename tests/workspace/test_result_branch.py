"""The result branch `codeyard/<run-id>` is a new branch: never one the user has, never moved
over commits that are not the run's.

A branch in its way is found when the run is prepared (the coordinator refuses the submission,
naming `$.repo`: exit 2), not by the delivery after all of the run's work; one made while the run
goes on is left as it is by the delivery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from codeyard.coordinator.events import Merged
from codeyard.schemas import Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.testing.scripted_worker import new_file_patch
from codeyard.workspace.git import GitError, git, git_version
from codeyard.workspace.integration import GitIntegrator, ResultBranchTaken
from tests.repositories import one_commit_repo

NOTES_PATCH = new_file_patch("notes.md", "notes")


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    return one_commit_repo(tmp_path / "user", {"app.py": "print('hello')\n"})


def notes_run(repo: Path) -> Run:
    task = Task(spec=TaskSpec(id="a", title="add notes"), patch=Patch(text=NOTES_PATCH))
    return Run(run_id="r1", goal="g", repo=RepoRef(path=str(repo)), tasks={"a": task})


async def merged_run(integrator: GitIntegrator, repo: Path) -> Run:
    """The notes run prepared and its task merged: ready to be delivered."""
    run = notes_run(repo)
    run.repo = await integrator.prepare(run)
    assert isinstance(await integrator.merge(run, "a", 1), Merged)
    run.tasks["a"].state = TaskState.MERGED
    return run


def users_commit_on(repo: Path, branch: str) -> str:
    """A commit of the user's on `branch` (made at main if missing), the checkout left on main."""
    exists = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    git(repo, "checkout", "--quiet", *([branch] if exists else ["-b", branch]))
    git(repo, "commit", "--quiet", "--allow-empty", "-m", f"the user's work on {branch}")
    git(repo, "checkout", "--quiet", "main")
    return git(repo, "rev-parse", branch).strip()


def _the_result_branch(repo: Path) -> str:
    users_commit_on(repo, "codeyard/r1")  # by hand, or left by a run of this id
    return "has a branch codeyard/r1 already"


def _the_result_branch_packed(repo: Path) -> str:
    users_commit_on(repo, "codeyard/r1")
    git(repo, "pack-refs", "--all")
    return "has a branch codeyard/r1 already"


def _the_result_branch_in_a_worktree(repo: Path) -> str:
    worktree = repo.parent / "worktree"
    git(repo, "worktree", "add", "--quiet", "-b", "codeyard/r1", str(worktree))
    return f"once the worktree {worktree} has another branch checked out"


def _a_branch_named_codeyard(repo: Path) -> str:
    users_commit_on(repo, "codeyard")
    git(repo, "pack-refs", "--all")
    return "has a branch codeyard, which keeps git from making the branch codeyard/r1"


def _a_branch_under_it(repo: Path) -> str:
    users_commit_on(repo, "codeyard/r1/old")
    return "has a branch codeyard/r1/old, which keeps git from making the branch codeyard/r1"


@pytest.mark.parametrize(
    "in_the_way",
    [
        _the_result_branch,
        _the_result_branch_packed,
        _the_result_branch_in_a_worktree,
        _a_branch_named_codeyard,
        _a_branch_under_it,
    ],
)
async def test_a_branch_in_the_way_of_the_result_branch_is_refused_before_any_work(
    user_repo: Path, tmp_path: Path, in_the_way: Callable[[Path], str]
) -> None:
    said = in_the_way(user_repo)
    branches = git(user_repo, "for-each-ref", "--format=%(refname) %(objectname)")
    integrator = GitIntegrator(tmp_path / "data")

    with pytest.raises(ResultBranchTaken) as refused:
        await integrator.prepare(notes_run(user_repo))

    assert said in str(refused.value)
    assert "--run-id" in str(refused.value) or "branch -m" in str(refused.value)
    assert not integrator.integration_dir("r1").exists()
    assert git(user_repo, "for-each-ref", "--format=%(refname) %(objectname)") == branches


async def test_other_runs_branches_are_no_obstacle(user_repo: Path, tmp_path: Path) -> None:
    users_commit_on(user_repo, "codeyard/r10")
    users_commit_on(user_repo, "codeyard/r")
    integrator = GitIntegrator(tmp_path / "data")
    run = await merged_run(integrator, user_repo)

    assert (await integrator.integrate(run)).ok
    assert git(user_repo, "show", "codeyard/r1:notes.md") == "notes\n"


async def test_a_branch_made_while_the_run_went_on_is_never_overwritten(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = await merged_run(integrator, user_repo)
    users = users_commit_on(user_repo, "codeyard/r1")
    head = git(Path(run.repo.snapshot), "rev-parse", "HEAD").strip()

    delivered = await integrator.integrate(run)

    assert not delivered.ok
    assert "was made or moved since the run started" in delivered.report
    assert f"The result is commit {head} of {run.repo.snapshot}" in delivered.report
    assert git(user_repo, "rev-parse", "codeyard/r1").strip() == users


async def test_a_delivery_git_refuses_for_a_moment_raises_to_be_tried_again(
    user_repo: Path, tmp_path: Path
) -> None:
    """Another git process holds the branch's lock in the user's repository: the delivery was
    answered `ok=False`, which failed the run for good, though a moment later it succeeds."""
    integrator = GitIntegrator(tmp_path / "data")
    run = await merged_run(integrator, user_repo)
    lock = user_repo / ".git" / "refs" / "heads" / "codeyard" / "r1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")

    with pytest.raises(GitError, match=r"r1\.lock"):
        await integrator.integrate(run)
    lock.unlink()
    delivered = await integrator.integrate(run)

    assert delivered.ok, delivered.report
    assert git(user_repo, "show", "codeyard/r1:notes.md") == "notes\n"


async def test_delivering_again_succeeds_and_moves_nothing_back(
    user_repo: Path, tmp_path: Path
) -> None:
    """A coordinator that crashed after delivering delivers again when it comes back; by then
    the user may have built on the branch."""
    integrator = GitIntegrator(tmp_path / "data")
    run = await merged_run(integrator, user_repo)
    assert (await integrator.integrate(run)).ok
    delivered = git(user_repo, "rev-parse", "codeyard/r1").strip()

    again = await GitIntegrator(tmp_path / "data").integrate(run)
    assert again.ok, again.report
    assert git(user_repo, "rev-parse", "codeyard/r1").strip() == delivered

    built_on = users_commit_on(user_repo, "codeyard/r1")
    once_more = await GitIntegrator(tmp_path / "data").integrate(run)
    assert once_more.ok, once_more.report
    assert git(user_repo, "rev-parse", "codeyard/r1").strip() == built_on


@pytest.mark.skipif(git_version() < (2, 29), reason="git fetch --no-write-fetch-head: git 2.29")
async def test_the_delivery_leaves_the_users_fetch_head_alone(
    user_repo: Path, tmp_path: Path
) -> None:
    upstream = one_commit_repo(tmp_path / "upstream", {"lib.py": "x = 1\n"})
    git(user_repo, "fetch", "--quiet", str(upstream), "main")  # the user's own last fetch
    fetch_head = (user_repo / ".git" / "FETCH_HEAD").read_text()
    integrator = GitIntegrator(tmp_path / "data")
    run = await merged_run(integrator, user_repo)

    assert (await integrator.integrate(run)).ok
    assert (user_repo / ".git" / "FETCH_HEAD").read_text() == fetch_head
