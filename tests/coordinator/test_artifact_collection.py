"""Garbage collection of the artifacts store and of the integration clones: real nats-server,
real git, a tiny retention.

The collector is driven directly with the open runs it is told about, then through the leading
coordinator: the `gc` control verb and the periodic collection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from prometheus_client import REGISTRY

from codeyard.bus import Bus
from codeyard.bus.subjects import result_subject
from codeyard.coordinator.artifact_collector import ArtifactCollector
from codeyard.coordinator.events import Merged
from codeyard.coordinator.service import Coordinator
from codeyard.report import build_report
from codeyard.report.source import fetch_run, read_run_events
from codeyard.schemas import (
    Accepted,
    ArtifactsCollected,
    CancelRun,
    CollectArtifacts,
    ControlError,
    Patch,
    RepoRef,
    Run,
    RunState,
    SubmitRun,
    Task,
    TaskSpec,
    TaskState,
    encode,
)
from codeyard.schemas.model import SnapshotRef
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, inline, offload
from codeyard.workspace.rollback import rollback
from codeyard.workspace.snapshots import artifact_store, publish_snapshot
from tests.coordinator.harness import (
    ask,
    patched,
    running_coordinator,
    status,
    wait_for_task,
    work_for_coders,
)
from tests.repositories import one_commit_repo

RETENTION = 0.3  # seconds
PAST_RETENTION = 0.5


@pytest.fixture
async def store(bus: Bus) -> ObjectStore:
    return await artifact_store(bus.js)


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    return one_commit_repo(tmp_path / "user", {"app.py": "print('hello')\n"})


def commit(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD").strip()


def big_patch(marker: str) -> Patch:
    body = "".join(f"+{marker} line {i}\n" for i in range(INLINE_PATCH_CHARS // 10))
    return Patch(text=f"--- a/big.txt\n+++ b/big.txt\n@@ -0,0 +1 @@\n{body}")


async def names(store: ObjectStore) -> set[str]:
    try:
        return {info.name for info in await store.list(ignore_deletes=True) if info.name}
    except NotFoundError:
        return set()


def deleted_count(kind: str) -> float:
    return REGISTRY.get_sample_value("codeyard_artifacts_deleted_total", {"kind": kind}) or 0.0


def clones_deleted(reason: str) -> float:
    sample = "codeyard_integration_clones_deleted_total"
    return REGISTRY.get_sample_value(sample, {"reason": reason}) or 0.0


def new_file(name: str) -> Patch:
    return Patch(text=f"--- /dev/null\n+++ b/{name}\n@@ -0,0 +1 @@\n+{name}\n")


def backdate(run_dir: Path) -> None:
    """As if nothing had written to the clone for a day."""
    day_ago = datetime.now(UTC).timestamp() - 86400
    for path in (run_dir, run_dir / "integration", run_dir / "integration" / ".git"):
        os.utime(path, (day_ago, day_ago))


def open_run(run_id: str, chain: SnapshotRef, *patches: Patch) -> Run:
    tasks = {
        f"t{i}": Task(spec=TaskSpec(id=f"t{i}", title="t"), patch=patch)
        for i, patch in enumerate(patches)
    }
    repo = RepoRef(path="/user", head=chain.head, bundles=chain)
    return Run(run_id=run_id, goal="g", repo=repo, tasks=tasks)


def collector(
    bus: Bus, store: ObjectStore, runs: list[Run], leading: bool = True
) -> ArtifactCollector:
    return ArtifactCollector(
        store, bus.js, open_runs=lambda: runs, leading=lambda: leading, retention=RETENTION
    )


async def test_a_runs_artifacts_stay_while_it_is_open_and_go_after_it_ends(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    full = await publish_snapshot(store, user_repo, "HEAD")
    commit(user_repo, "feature.py", "x = 1\n")
    chain = await publish_snapshot(store, user_repo, "HEAD", full)  # full + increment
    patch = await offload(store, big_patch("a"))
    stored = {*(bundle.name for bundle in chain.bundles), patch.object_name}
    assert await names(store) == stored
    runs = [open_run("r1", chain, patch)]
    gc = collector(bus, store, runs)
    await asyncio.sleep(PAST_RETENTION)

    kept = await gc.collect()
    assert kept.deleted == []
    assert kept.referenced == 3
    assert await names(store) == stored

    runs.clear()  # the run ended
    bundles_before = deleted_count("bundle")
    collected = await gc.collect()
    assert {found.name for found in collected.deleted} == stored
    assert await names(store) == set()
    assert deleted_count("bundle") == bundles_before + 2


async def test_a_bundle_shared_with_an_open_run_stays(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    shared = await publish_snapshot(store, user_repo, "HEAD")
    commit(user_repo, "finished.py", "x = 1\n")
    finished = await publish_snapshot(store, user_repo, "HEAD", shared)
    await asyncio.sleep(PAST_RETENTION)

    collected = await collector(bus, store, [open_run("r2", shared)]).collect()
    assert [found.name for found in collected.deleted] == [finished.newest.name]
    assert await names(store) == {shared.root.name}


async def test_nothing_younger_than_the_retention_goes(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    await publish_snapshot(store, user_repo, "HEAD")
    gc = ArtifactCollector(store, bus.js, open_runs=list, leading=lambda: True, retention=3600)
    collected = await gc.collect()
    assert collected.deleted == []
    assert collected.recent == 1


async def test_reusing_a_stored_object_restarts_its_retention(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    first = await offload(store, big_patch("same"))
    snapshot = await publish_snapshot(store, user_repo, "HEAD")
    await asyncio.sleep(PAST_RETENTION)
    # a coder produces the same patch again, a new run starts from the same commit: both are
    # found in the store, not uploaded, and must not be taken before their runs record them
    assert await offload(store, big_patch("same")) == first
    assert await publish_snapshot(store, user_repo, "HEAD") == snapshot

    collected = await collector(bus, store, []).collect()
    assert collected.deleted == []
    assert collected.recent == 2


async def test_a_dry_run_deletes_nothing_and_names_what_would_go(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    snapshot = await publish_snapshot(store, user_repo, "HEAD")
    patch = await offload(store, big_patch("b"))
    await asyncio.sleep(PAST_RETENTION)

    dry = await collector(bus, store, []).collect(dry_run=True)
    assert dry.dry_run
    assert {found.name for found in dry.deleted} == {snapshot.root.name, patch.object_name}
    assert {found.size for found in dry.deleted if found.name == snapshot.root.name} == {
        snapshot.root.size
    }
    assert await names(store) == {snapshot.root.name, patch.object_name}


async def test_objects_codeyard_did_not_write_and_a_deposed_leader_delete_nothing(
    bus: Bus, store: ObjectStore, user_repo: Path
) -> None:
    await store.put("reports/run-1.html", b"<html></html>")
    snapshot = await publish_snapshot(store, user_repo, "HEAD")
    await asyncio.sleep(PAST_RETENTION)

    deposed = await collector(bus, store, [], leading=False).collect()
    assert deposed.deleted == []
    collected = await collector(bus, store, []).collect()
    assert [found.name for found in collected.deleted] == [snapshot.root.name]
    assert await names(store) == {"reports/run-1.html"}


async def delivered_run(integrator: GitIntegrator, repo: Path) -> Run:
    """Run r1, done: tasks a and b merged in its clone and delivered as codeyard/r1."""
    tasks = {
        task_id: Task(spec=TaskSpec(id=task_id, title=task_id), patch=new_file(f"{task_id}.txt"))
        for task_id in ("a", "b")
    }
    run = Run(run_id="r1", goal="g", repo=RepoRef(path=str(repo)), tasks=tasks)
    run.repo = await integrator.prepare(run)
    for task_id, task in tasks.items():
        assert isinstance(await integrator.merge(run, task_id, 1), Merged)
        task.state = TaskState.MERGED
    assert (await integrator.integrate(run)).ok
    return run


async def test_a_done_runs_clone_goes_after_the_retention_and_its_branch_stays_usable(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data", artifacts=store)
    run = await delivered_run(integrator, user_repo)
    clone = Path(run.repo.snapshot)
    open_runs = [run]

    async def recorded() -> list[Run]:
        return [run]

    gc = ArtifactCollector(
        store,
        bus.js,
        open_runs=lambda: open_runs,
        leading=lambda: True,
        retention=RETENTION,
        clones=integrator.root,
        recorded_runs=recorded,
    )
    await asyncio.sleep(PAST_RETENTION)
    while_open = await gc.collect()
    assert (while_open.clones, while_open.open_clones) == ([], 1)

    run.state, run.updated_at = RunState.DONE, datetime.now(UTC)
    open_runs.clear()
    just_ended = await gc.collect()
    assert (just_ended.clones, just_ended.recent_clones) == ([], 1)
    assert clone.is_dir()

    await asyncio.sleep(PAST_RETENTION)
    dry = await gc.collect(dry_run=True)
    [listed] = dry.clones
    assert (listed.run_id, listed.run_state) == ("r1", RunState.DONE)
    assert listed.path == str(clone.parent)  # the run's directory, with its clone inside
    assert listed.size > 0
    assert listed.unused_since == run.updated_at
    assert clone.is_dir()

    before = clones_deleted("ended")
    collected = await gc.collect()
    assert collected.clones == dry.clones
    assert not clone.parent.exists()
    assert list(integrator.root.iterdir()) == []
    assert clones_deleted("ended") == before + 1
    # the result lives in the user's repository: rollback never needed the clone
    moved = rollback(user_repo, "r1", "a")
    assert [commit.subject for commit in moved.dropped] == ["b"]


async def test_no_clone_goes_while_the_collector_does_not_lead(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data", artifacts=store)
    run = await delivered_run(integrator, user_repo)
    run.state = RunState.DONE

    async def recorded() -> list[Run]:
        return [run]

    deposed = ArtifactCollector(
        store,
        bus.js,
        open_runs=list,
        leading=lambda: False,
        retention=RETENTION,
        clones=integrator.root,
        recorded_runs=recorded,
    )
    await asyncio.sleep(PAST_RETENTION)
    assert (await deposed.collect()).clones == []
    assert Path(run.repo.snapshot).is_dir()


@asynccontextmanager
async def leading(
    bus: Bus, store: ObjectStore, data: Path, first_collection_after: float = 3600.0
) -> AsyncIterator[Coordinator]:
    integrator = GitIntegrator(data, artifacts=store)
    coordinator = Coordinator(
        bus,
        name="coord-gc",
        integrator=integrator,
        artifacts=store,
        artifact_retention=RETENTION,
        first_collection_after=first_collection_after,
        collect_every=0.2,
        integration_clones=integrator.root,
    )
    async with running_coordinator(coordinator):
        yield coordinator


async def gc(bus: Bus, dry_run: bool = False) -> ArtifactsCollected:
    reply = await ask(bus, "gc", CollectArtifacts(dry_run=dry_run))
    assert isinstance(reply, ArtifactsCollected), reply
    return reply


def waiting_for_plan_approval(run_id: str, repo: Path) -> SubmitRun:
    """A run that stays open (its plan waits for a person) with its snapshot published."""
    plan = [TaskSpec(id="a", title="a")]
    return SubmitRun(
        run_id=run_id, goal="g", repo=RepoRef(path=str(repo)), plan=plan, approve_plan=True
    )


async def test_the_coordinator_collects_what_its_open_runs_no_longer_need(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    async with leading(bus, store, tmp_path / "data"):
        # two runs from the same commit: one content-addressed full bundle for both
        for run_id in ("first", "second"):
            accepted = await ask(bus, "submit", waiting_for_plan_approval(run_id, user_repo))
            assert isinstance(accepted, Accepted), accepted
        [bundle] = await names(store)
        stray = await offload(store, big_patch("stray"))  # a finished run's patch, say
        await asyncio.sleep(PAST_RETENTION)

        dry = await gc(bus, dry_run=True)
        assert [found.name for found in dry.deleted] == [stray.object_name]
        assert await names(store) == {bundle, stray.object_name}

        assert isinstance(await ask(bus, "cancel", CancelRun(run_id="first")), Accepted)
        collected = await gc(bus)
        assert [found.name for found in collected.deleted] == [stray.object_name]
        assert collected.referenced == 1  # "second" still uses the shared bundle
        assert await names(store) == {bundle}

        assert isinstance(await ask(bus, "cancel", CancelRun(run_id="second")), Accepted)
        collected = await gc(bus)
        assert [found.name for found in collected.deleted] == [bundle]
        assert await names(store) == set()


async def test_the_coordinator_removes_the_clones_of_ended_runs_and_of_runs_it_lost(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "data" / "runs"
    async with leading(bus, store, tmp_path / "data"):
        for run_id in ("open", "ended"):
            accepted = await ask(bus, "submit", waiting_for_plan_approval(run_id, user_repo))
            assert isinstance(accepted, Accepted), accepted
        # clones of runs cy_runs does not have: one untouched for a day (its run wiped with
        # the store, say), one just made (a run being submitted is cloned before it is
        # recorded); and what someone else put there
        for run_id in ("lost", "new"):
            (runs / run_id).mkdir()
            git(runs / run_id, "clone", "-q", str(user_repo), "integration")
        backdate(runs / "lost")
        (runs / "notes.txt").write_text("not codeyard's\n")
        assert isinstance(await ask(bus, "cancel", CancelRun(run_id="ended")), Accepted)
        await asyncio.sleep(PAST_RETENTION)
        backdate(runs / "open")  # an open run's clone stays, however long unchanged
        (runs / "new" / "integration" / "touched").write_text("now\n")
        os.utime(runs / "new")

        dry = await gc(bus, dry_run=True)
        assert [(clone.run_id, clone.run_state) for clone in dry.clones] == [
            ("lost", None),
            ("ended", RunState.CANCELLED),
        ]
        assert (dry.open_clones, dry.recent_clones) == (1, 1)
        assert sorted(path.name for path in runs.iterdir()) == [
            "ended",
            "lost",
            "new",
            "notes.txt",
            "open",
        ]

        before = clones_deleted("no_run")
        collected = await gc(bus)
        assert collected.clones == dry.clones
        assert sorted(path.name for path in runs.iterdir()) == ["new", "notes.txt", "open"]
        assert clones_deleted("no_run") == before + 1
        assert git(runs / "open" / "integration", "status", "--porcelain") == ""
        # the ended run's record and events are untouched: its report is as before
        ended = await fetch_run(bus, "ended")
        report = build_report(ended, await read_run_events(bus, "ended"))
        assert report.state is RunState.CANCELLED
        assert report.result_branch == ""  # a cancelled run delivered no branch


async def test_the_leader_collects_periodically_in_the_background(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    stray = await offload(store, big_patch("periodic"))
    async with leading(bus, store, tmp_path / "data", first_collection_after=0.0):
        accepted = await ask(bus, "submit", waiting_for_plan_approval("open", user_repo))
        assert isinstance(accepted, Accepted), accepted
        for _ in range(200):
            if stray.object_name not in await names(store):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(PAST_RETENTION)  # the open run's bundle is old enough now, and
        chain = (await status(bus, "open")).repo.bundles
        assert chain is not None
        assert (await gc(bus)).referenced == 1  # stays: the run uses it
        assert await names(store) == {chain.root.name}


async def test_a_patch_the_leader_stores_for_a_coder_stays_while_its_run_is_open(
    bus: Bus, store: ObjectStore, user_repo: Path, tmp_path: Path
) -> None:
    """The leader stores a coder's large patch and records its reference in one step, while
    it collects in the background: the same text stored long ago (by a run that ended) is
    either collected first and stored again, or kept; never deleted under the reference."""
    patch = big_patch("coded")
    long_ago = await offload(store, patch)
    await asyncio.sleep(PAST_RETENTION)
    async with leading(bus, store, tmp_path / "data", first_collection_after=0.0):
        repo, plan = RepoRef(path=str(user_repo)), [TaskSpec(id="t1", title="t")]
        submitted = SubmitRun(run_id="coded", goal="g", repo=repo, plan=plan)
        assert isinstance(await ask(bus, "submit", submitted), Accepted)
        [item] = await work_for_coders(bus, 1)
        await bus.js.publish(result_subject("coder"), encode(patched(item, patch.text)))
        run = await wait_for_task(bus, "coded", "t1", TaskState.TESTING)
        await asyncio.sleep(3 * PAST_RETENTION)  # collections every 0.2 s meanwhile

        assert run.tasks["t1"].patch == long_ago
        assert long_ago.object_name in await names(store)
        assert (await inline(store, long_ago)).text == patch.text


async def test_a_coordinator_without_an_artifacts_store_refuses_to_collect(bus: Bus) -> None:
    async with running_coordinator(Coordinator(bus, name="coord-plain")):
        reply = await ask(bus, "gc", CollectArtifacts())
    assert isinstance(reply, ControlError)
    assert "no artifacts store" in reply.error
