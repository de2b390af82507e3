"""Snapshots over the object store: real nats-server, real git, small repositories."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import stat
from pathlib import Path

import msgspec
import pytest
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus import Bus
from codeyard.bus.object_reader import ObjectReader, chunk_subject
from codeyard.schemas.model import SnapshotBundle, SnapshotRef
from codeyard.workspace.git import git
from codeyard.workspace.snapshot_cache import DownloadStalled, SnapshotCache, SnapshotCorrupt
from codeyard.workspace.snapshots import (
    SnapshotMissing,
    artifact_store,
    publish_snapshot,
)
from tests.repositories import one_commit_repo

# incompressible, so that the full bundle is clearly larger than an increment
BINARY = random.Random(6).randbytes(40_000) + b"\x00\xff" * 100


@pytest.fixture
async def store(bus: Bus) -> ObjectStore:
    return await artifact_store(bus.js)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "source"
    repo.mkdir()
    (repo / "data.bin").write_bytes(BINARY)
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    modules = {f"pkg/module{i}.py": f"VALUE = {i}\n" + "# filler\n" * 200 for i in range(20)}
    return one_commit_repo(repo, {"app.py": "print('hello')\n", **modules})


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def tree(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD^{tree}").strip()


def files(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file outside .git: its bytes and whether it is executable."""
    found = {}
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts or not path.is_file():
            continue
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        found[str(path.relative_to(root))] = (path.read_bytes(), executable)
    return found


async def object_names(store: ObjectStore) -> list[str]:
    try:
        return sorted(info.name for info in await store.list(ignore_deletes=True) if info.name)
    except NotFoundError:
        return []


async def test_snapshot_round_trips_with_binary_files_and_modes(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    ref = await publish_snapshot(store, repo, "HEAD")
    assert ref.head == git(repo, "rev-parse", "HEAD").strip()
    assert ref.newest.name == f"git-bundle/sha256-{ref.newest.sha256}"
    assert msgspec.json.decode(msgspec.json.encode(ref), type=SnapshotRef) == ref

    cache = SnapshotCache(store, tmp_path / "cache")
    checkout = await cache.checkout(ref, tmp_path / "work")
    assert git(checkout, "rev-parse", "HEAD").strip() == ref.head
    assert tree(checkout) == tree(repo)
    assert files(checkout) == files(repo)
    assert files(checkout)["run.sh"][1] is True
    assert files(checkout)["data.bin"] == (BINARY, False)
    assert git(checkout, "status", "--porcelain") == ""


async def test_publishing_the_same_head_twice_uploads_once(store: ObjectStore, repo: Path) -> None:
    first = await publish_snapshot(store, repo, "HEAD")
    names = await object_names(store)
    second = await publish_snapshot(store, repo, "HEAD")
    assert second == first
    assert await object_names(store) == names == [first.newest.name]


async def test_incremental_snapshot_needs_its_base_and_checks_out_from_cold_and_warm_cache(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    base = await publish_snapshot(store, repo, "HEAD")
    warm = SnapshotCache(store, tmp_path / "warm")
    await warm.checkout(base, tmp_path / "base-work")

    (repo / "app.py").write_text("print('hello again')\n")
    (repo / "new.txt").write_text("new\n")
    commit_all(repo, "second")
    later = await publish_snapshot(store, repo, "HEAD", base)
    assert later.bundles[:-1] == base.bundles
    assert later.newest.size < base.newest.size / 4

    cold = SnapshotCache(store, tmp_path / "cold")
    checkout = await cold.checkout(later, tmp_path / "cold-work")
    assert cold.downloaded == [base.newest.name, later.newest.name]
    assert tree(checkout) == tree(repo)
    assert files(checkout) == files(repo)

    warm.downloaded.clear()
    checkout = await warm.checkout(later, tmp_path / "warm-work")
    assert warm.downloaded == [later.newest.name]
    assert tree(checkout) == tree(repo)
    # the older checkout is untouched by the newer snapshot
    assert (tmp_path / "base-work" / "app.py").read_text() == "print('hello')\n"


async def test_a_head_already_in_the_base_history_needs_no_bundle(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "app.py").write_text("print('second')\n")
    commit_all(repo, "second")
    base = await publish_snapshot(store, repo, "HEAD")
    older = await publish_snapshot(store, repo, first, base)
    assert older.bundles == base.bundles
    assert older.head == first
    checkout = await SnapshotCache(store, tmp_path / "cache").checkout(older, tmp_path / "work")
    assert (checkout / "app.py").read_text() == "print('hello')\n"


async def test_a_base_the_repository_lacks_gives_a_full_snapshot(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    sha = "0" * 64
    bogus = SnapshotBundle(name=f"git-bundle/sha256-{sha}", sha256=sha, size=1, head="1" * 40)
    base = SnapshotRef(head="1" * 40, bundles=(bogus,))
    ref = await publish_snapshot(store, repo, "HEAD", base)
    assert len(ref.bundles) == 1
    checkout = await SnapshotCache(store, tmp_path / "cache").checkout(ref, tmp_path / "work")
    assert tree(checkout) == tree(repo)


async def test_a_damaged_cached_bundle_is_downloaded_again(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    ref = await publish_snapshot(store, repo, "HEAD")
    cache = SnapshotCache(store, tmp_path / "cache")
    await cache.prepare(ref)
    cached = cache.bundle_path(ref.newest)
    damaged = bytearray(cached.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    cached.write_bytes(bytes(damaged))

    # with the repository gone (say, deleted to save space), the cache must read the bundle again
    shutil.rmtree(cache.repository(ref))
    cache.downloaded.clear()
    checkout = await cache.checkout(ref, tmp_path / "work")
    assert cache.downloaded == [ref.newest.name]
    assert tree(checkout) == tree(repo)
    assert cached.read_bytes() != bytes(damaged)


async def test_concurrent_checkouts_share_one_cache(
    store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    ref = await publish_snapshot(store, repo, "HEAD")
    # two instances on one directory stand for two processes: only the file lock is shared
    first, second = (SnapshotCache(store, tmp_path / "cache") for _ in range(2))
    checkouts = await asyncio.gather(
        first.checkout(ref, tmp_path / "a"),
        second.checkout(ref, tmp_path / "b"),
        first.checkout(ref, tmp_path / "c"),
    )
    for checkout in checkouts:
        assert tree(checkout) == tree(repo)
        assert files(checkout) == files(repo)
    assert len(first.downloaded) + len(second.downloaded) == 1
    leftovers = [p.name for p in (tmp_path / "cache" / "bundles").iterdir()]
    assert leftovers == [f"sha256-{ref.newest.sha256}.bundle"]


async def test_a_missing_bundle_is_a_clear_error(store: ObjectStore, tmp_path: Path) -> None:
    sha = "ab" * 32
    missing = SnapshotBundle(name=f"git-bundle/sha256-{sha}", sha256=sha, size=10, head="c" * 40)
    cache = SnapshotCache(store, tmp_path / "cache")
    with pytest.raises(SnapshotMissing, match=f"git-bundle/sha256-{sha} is not in"):
        await cache.checkout(SnapshotRef(head="c" * 40, bundles=(missing,)), tmp_path / "work")
    assert not os.listdir(tmp_path / "cache" / "bundles")


async def test_a_bundle_whose_chunks_are_gone_is_a_damaged_download(
    bus: Bus, store: ObjectStore, repo: Path, tmp_path: Path
) -> None:
    # not a missing snapshot (which no retry brings back) but a download to try again
    ref = await publish_snapshot(store, repo, "HEAD")
    reader = ObjectReader.of(store)
    nuid = (await reader.info(ref.newest.name)).nuid
    await bus.js.purge_stream(reader.stream, subject=chunk_subject(reader.bucket, nuid))
    cache = SnapshotCache(store, tmp_path / "cache")
    missing = rf"{re.escape(ref.newest.name)}: .* chunk 1 of \d+ is missing"
    with pytest.raises(SnapshotCorrupt, match=missing):
        await cache.checkout(ref, tmp_path / "work")
    assert not os.listdir(tmp_path / "cache" / "bundles")


async def test_a_download_that_stops_arriving_is_abandoned(
    store: ObjectStore, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await publish_snapshot(store, repo, "HEAD")

    async def silent(self: ObjectReader, name: str, file: object) -> ObjectInfo:
        await asyncio.sleep(60)
        raise AssertionError("not abandoned")

    monkeypatch.setattr(ObjectReader, "read_into", silent)
    cache = SnapshotCache(store, tmp_path / "cache", stall_timeout=0.2)
    with pytest.raises(DownloadStalled, match="stalled at 0 of"):
        await cache.checkout(ref, tmp_path / "work")
    assert not os.listdir(tmp_path / "cache" / "bundles")


async def test_the_artifacts_bucket_has_room_for_a_large_repository(store: ObjectStore) -> None:
    config = (await store.status()).stream_info.config
    assert config.max_bytes in (None, -1)
    assert config.max_msg_size in (None, -1) or (config.max_msg_size or 0) >= 128 * 1024
