"""Garbage collection of the artifacts store: real nats-server, real git, a tiny retention.

The collector is driven directly with the open runs it is told about, then through the leading
coordinator: the `gc` control verb and the periodic collection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from prometheus_client import REGISTRY

from codeyard.bus import Bus
from codeyard.coordinator.artifact_collector import ArtifactCollector
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    Accepted,
    ArtifactsCollected,
    CancelRun,
    CollectArtifacts,
    ControlError,
    Patch,
    RepoRef,
    Run,
    SubmitRun,
    Task,
    TaskSpec,
)
from codeyard.schemas.model import SnapshotRef
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, offload
from codeyard.workspace.snapshots import artifact_store, publish_snapshot
from tests.coordinator.harness import ask, status
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


@asynccontextmanager
async def leading(
    bus: Bus, store: ObjectStore, data: Path, first_collection_after: float = 3600.0
) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(
        bus,
        name="coord-gc",
        integrator=GitIntegrator(data, artifacts=store),
        artifacts=store,
        artifact_retention=RETENTION,
        first_collection_after=first_collection_after,
        collect_every=0.2,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(coordinator.run(stop))
    await asyncio.wait_for(coordinator.leading.wait(), 10)
    try:
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


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


async def test_a_coordinator_without_an_artifacts_store_refuses_to_collect(bus: Bus) -> None:
    coordinator = Coordinator(bus, name="coord-plain")
    stop = asyncio.Event()
    running = asyncio.create_task(coordinator.run(stop))
    await asyncio.wait_for(coordinator.leading.wait(), 10)
    try:
        reply = await ask(bus, "gc", CollectArtifacts())
        assert isinstance(reply, ControlError)
        assert "no artifacts store" in reply.error
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
