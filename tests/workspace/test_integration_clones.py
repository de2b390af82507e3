"""The integration clones on disk, as garbage collection sees them: real clones made by
`GitIntegrator`, listed, aged by what changes them, measured and removed."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from codeyard.coordinator.events import Merged
from codeyard.schemas import Patch, RepoRef, Run, Task, TaskSpec
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator
from codeyard.workspace.integration_clones import (
    last_change,
    list_clones,
    remove_clone,
    remove_leftovers,
    size_on_disk,
)
from tests.repositories import deep_tree

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "user"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "app.py").write_text("x = 1\n")
    git(repo, "add", "app.py")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def new_run(run_id: str, repo: Path) -> Run:
    task = Task(
        spec=TaskSpec(id="a", title="add notes"),
        patch=Patch(text="--- /dev/null\n+++ b/notes.md\n@@ -0,0 +1 @@\n+notes\n"),
    )
    return Run(run_id=run_id, goal="g", repo=RepoRef(path=str(repo)), tasks={"a": task})


async def prepared(integrator: GitIntegrator, run_id: str, repo: Path) -> Run:
    run = new_run(run_id, repo)
    run.repo = await integrator.prepare(run)
    return run


def backdate(run_dir: Path) -> None:
    """As if nothing had written to the clone since LONG_AGO."""
    for path in (run_dir, run_dir / "integration", run_dir / "integration" / ".git"):
        os.utime(path, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))


async def test_only_the_directories_of_runs_are_listed(user_repo: Path, tmp_path: Path) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    for run_id in ("r2", "r1"):
        await prepared(integrator, run_id, user_repo)
    root = integrator.root
    (root / "README.txt").write_text("someone's notes\n")
    (root / "not.a.run").mkdir()
    (root / ".r3.42.removing").mkdir()  # a removal a crash interrupted
    (root / "elsewhere").symlink_to(user_repo)

    found = list_clones(root)
    assert [(clone.run_id, clone.path) for clone in found] == [
        ("r1", root / "r1"),
        ("r2", root / "r2"),
    ]
    assert all(datetime.now(UTC) - clone.changed_at < timedelta(minutes=5) for clone in found)
    assert list_clones(tmp_path / "no-data-yet") == []


async def test_a_merge_changes_a_clone_and_reading_it_does_not(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = await prepared(integrator, "r1", user_repo)
    run_dir = integrator.root / "r1"
    backdate(run_dir)
    assert last_change(run_dir) == LONG_AGO

    git(Path(run.repo.snapshot), "log", "--oneline")  # delivery and reports only read
    assert last_change(run_dir) == LONG_AGO

    assert isinstance(await integrator.merge(run, "a", 1), Merged)
    changed = last_change(run_dir)
    assert changed is not None
    assert changed > LONG_AGO + timedelta(days=1)


async def test_preparing_a_run_again_marks_its_clone_changed(
    user_repo: Path, tmp_path: Path
) -> None:
    # a submission under the id of a clone whose run was lost: not to be collected under it
    integrator = GitIntegrator(tmp_path / "data")
    await prepared(integrator, "r1", user_repo)
    backdate(integrator.root / "r1")
    await prepared(integrator, "r1", user_repo)
    changed = last_change(integrator.root / "r1")
    assert changed is not None
    assert changed > LONG_AGO + timedelta(days=1)
    assert last_change(integrator.root / "never-there") is None


async def test_a_clone_is_measured_and_removed_whole(user_repo: Path, tmp_path: Path) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = await prepared(integrator, "r1", user_repo)
    await prepared(integrator, "r2", user_repo)
    run_dir = integrator.root / "r1"
    files = [path for path in run_dir.rglob("*") if path.is_file() and not path.is_symlink()]
    assert size_on_disk(run_dir) == sum(path.stat().st_size for path in files)
    assert size_on_disk(run_dir) > len((user_repo / "app.py").read_bytes())

    assert remove_clone(run_dir)
    assert not Path(run.repo.snapshot).exists()
    assert sorted(path.name for path in integrator.root.iterdir()) == ["r2"]
    assert not remove_clone(run_dir)  # gone already: another collection was first


def test_removals_a_crash_interrupted_are_finished(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (root / ".r1.4242.removing" / "integration").mkdir(parents=True)
    (root / "r2").mkdir()
    remove_leftovers(root)
    assert [path.name for path in root.iterdir()] == ["r2"]
    remove_leftovers(tmp_path / "no-runs-yet")  # nothing to do, nothing raised


def test_a_tree_deeper_than_pythons_recursion_limit_is_measured_and_removed(
    tmp_path: Path,
) -> None:
    """A run's files may be of any depth (a repository's own, say): deeper than the recursion
    limit, `os.walk` and `shutil.rmtree` raised RecursionError on Python 3.11, and the clone
    stayed, failing every later collection on the same leftover."""
    root = tmp_path / "runs"
    deep_tree(root / "r1", 1500)
    assert size_on_disk(root / "r1") == len("x = 1\n")
    assert remove_clone(root / "r1")
    deep_tree(root / ".r2.4242.removing", 1500)
    remove_leftovers(root)
    assert list(root.iterdir()) == []
