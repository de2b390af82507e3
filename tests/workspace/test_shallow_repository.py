"""A shallow repository (`git clone --depth 1`) is a run's repository like any other: its
snapshots carry where its history ends, so workers on other machines check it out too."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js.object_store import ObjectStore

from codeyard.agents.working_copy import working_copy
from codeyard.bus import Bus
from codeyard.coordinator.events import Merged
from codeyard.schemas import Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.testing.scripted_worker import new_file_patch
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator
from codeyard.workspace.snapshot_cache import SnapshotCache
from codeyard.workspace.snapshots import artifact_store
from tests.repositories import one_commit_repo

NOTES_PATCH = new_file_patch("notes.md", "notes")


@pytest.fixture
async def store(bus: Bus) -> ObjectStore:
    return await artifact_store(bus.js)


@pytest.fixture
def shallow_repo(tmp_path: Path) -> Path:
    """The last of three commits of a repository, cloned with --depth 1."""
    upstream = one_commit_repo(tmp_path / "upstream", {"app.py": "VERSION = 1\n"})
    for version in (2, 3):
        (upstream / "app.py").write_text(f"VERSION = {version}\n")
        git(upstream, "commit", "--quiet", "--all", "-m", f"version {version}")
    shallow = tmp_path / "user"
    git(tmp_path, "clone", "--quiet", "--depth", "1", f"file://{upstream}", str(shallow))
    assert git(shallow, "rev-parse", "--is-shallow-repository").strip() == "true"
    return shallow


async def test_a_shallow_repository_is_prepared_checked_out_by_workers_and_delivered(
    store: ObjectStore, shallow_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data", artifacts=store)
    task = Task(spec=TaskSpec(id="a", title="add notes"), patch=Patch(text=NOTES_PATCH))
    run = Run(run_id="r1", goal="g", repo=RepoRef(path=str(shallow_repo)), tasks={"a": task})

    run.repo = await integrator.prepare(run)  # a full snapshot
    merged = await integrator.merge(run, "a", 1)  # and an increment on it
    assert isinstance(merged, Merged), merged
    assert merged.repo is not None
    assert merged.repo.bundles is not None
    assert len(merged.repo.bundles.bundles) == 2

    # a worker on another machine: its snapshot cache from the object store, a working copy
    cache = SnapshotCache(store, tmp_path / "cache")
    checkout = await cache.checkout(merged.repo.bundles, tmp_path / "checkout")
    assert (checkout / "notes.md").read_text() == "notes\n"
    assert (checkout / "app.py").read_text() == "VERSION = 3\n"
    async with cache.using(merged.repo.bundles) as cached:
        local = RepoRef(snapshot=str(cached), head=merged.repo.head)
        async with working_copy(local) as root:
            assert git(root, "log", "--format=%s").splitlines() == ["add notes", "version 3"]

    task.state = TaskState.MERGED
    delivered = await integrator.integrate(run)
    assert delivered.ok, delivered.report
    assert git(shallow_repo, "show", "codeyard/r1:notes.md") == "notes\n"
