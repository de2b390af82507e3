"""Repository snapshots as git bundles in the `cy_artifacts` object store, so that workers need
no disk shared with the coordinator.

A snapshot is a chain of bundles: a full bundle of the first head, then incremental bundles
(`previous head..new head`) that need the ones before them. Bundles are named by the sha256 of
their bytes, so publishing what is already there uploads nothing and a name always means the
same bytes. Bundles are built in a temporary file and uploaded in chunks: a large repository
never sits in memory. `SnapshotCache` (snapshot_cache.py) is the reading side. A shallow
repository's (`git clone --depth`) full bundle says where its history ends (`SHALLOW_REFS`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from codeyard.bus.subjects import ARTIFACTS_BUCKET
from codeyard.schemas.model import SnapshotBundle, SnapshotRef
from codeyard.workspace.artifact_ages import refresh
from codeyard.workspace.git import GitError, git

log = logging.getLogger(__name__)

BUNDLE_PREFIX = "git-bundle/sha256-"
# The one ref every bundle carries: a fixed name keeps the bytes, and so the name, of a bundle
# of the same commits the same.
BUNDLE_REF = "refs/heads/snapshot"
# In a bundle of a shallow repository's commits (`git clone --depth`): one ref per commit of the
# bundle whose parents are not in the repository, so not in the bundle (the shallow boundary, as
# git records it in `.git/shallow`). A repository fetching from the bundle must record them as
# its own boundary first, or git takes their parents for missing objects.
SHALLOW_REFS = "refs/shallow/"
HASH_BLOCK = 1024 * 1024
# Bundling or checking out a large repository on a loaded machine takes a while.
GIT_TIMEOUT = 3600.0


class SnapshotError(RuntimeError):
    pass


class SnapshotMissing(SnapshotError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"snapshot bundle {name} is not in the object store bucket {ARTIFACTS_BUCKET} "
            "(deleted, or published to another NATS server)"
        )
        self.name = name


def bundle_name(sha256: str) -> str:
    return f"{BUNDLE_PREFIX}{sha256}"


async def artifact_store(js: JetStreamContext) -> ObjectStore:
    """The bucket snapshots live in (created by `ensure_topology`)."""
    return await js.object_store(ARTIFACTS_BUCKET)


def file_sha256(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


async def publish_snapshot(
    store: ObjectStore, repo: Path, head: str, base: SnapshotRef | None = None
) -> SnapshotRef:
    """Snapshot commit `head` (any revision) of the repository at `repo`.

    With `base`, only what `base.head` lacks is bundled and the result needs `base`'s bundles;
    when `repo` does not have `base.head` the snapshot is full instead. A `head` already in
    `base`'s history needs no bundle: the result is `base`'s chain pointing at `head`.
    """
    commit = await asyncio.to_thread(git, repo, "rev-parse", "--verify", f"{head}^{{commit}}")
    commit = commit.strip()
    if base is not None:
        if not await asyncio.to_thread(_has_commit, repo, base.head):
            log.info("%s lacks base snapshot head %s: publishing a full snapshot", repo, base.head)
            base = None
        elif await asyncio.to_thread(_in_history, repo, commit, base.head):
            return SnapshotRef(head=commit, bundles=base.bundles)
    with tempfile.TemporaryDirectory(prefix="codeyard-snapshot-") as scratch:
        path = Path(scratch) / "snapshot.bundle"
        await asyncio.to_thread(_create_bundle, repo, commit, base.head if base else None, path)
        sha256, size = await asyncio.to_thread(file_sha256, path)
        bundle = SnapshotBundle(name=bundle_name(sha256), sha256=sha256, size=size, head=commit)
        await _upload(store, bundle, path, base)
    return SnapshotRef(head=commit, bundles=(*base.bundles, bundle) if base else (bundle,))


async def _upload(
    store: ObjectStore, bundle: SnapshotBundle, path: Path, base: SnapshotRef | None
) -> None:
    # A bundle stored before (by this run or another) is reused, so its retention restarts:
    # garbage collection must not take it while the run that now needs it is being told.
    if await refresh(store, bundle.name):
        log.debug("snapshot bundle %s already stored", bundle.name)
        return
    description = f"git bundle of {bundle.head}" + (f" needing {base.head}" if base else "")
    file = await asyncio.to_thread(path.open, "rb")
    with file:
        # put() reads the file in chunks (in executor threads) and writes the object's metadata
        # last: a name that exists is a complete upload.
        await store.put(bundle.name, file, ObjectMeta(name=bundle.name, description=description))
    log.info("published snapshot bundle %s (%d bytes)", bundle.name, bundle.size)


def _has_commit(repo: Path, commit: str) -> bool:
    return _succeeds(repo, "cat-file", "-e", f"{commit}^{{commit}}")


def _in_history(repo: Path, commit: str, of: str) -> bool:
    return _succeeds(repo, "merge-base", "--is-ancestor", commit, of)


def _succeeds(repo: Path, *args: str) -> bool:
    try:
        git(repo, *args)
    except GitError:
        return False
    return True


def _create_bundle(repo: Path, commit: str, base: str | None, target: Path) -> None:
    """Write a bundle of `commit` (minus `base`'s history) to `target`.

    A bundle needs a ref, and the repository may be in use (the integrator commits to it): the
    ref is made in a scratch repository that borrows `repo`'s objects through alternates, and
    its shallow boundary, if any: history ends there (see `SHALLOW_REFS`).
    """
    objects = _git_path(repo, "objects")
    scratch = target.parent / "borrow.git"
    git(target.parent, "init", "--quiet", "--bare", scratch.name)
    (scratch / "objects" / "info" / "alternates").write_text(objects + "\n")
    boundary = shallow_boundary(Path(_git_path(repo, "shallow")))
    if boundary:
        (scratch / "shallow").write_text("".join(f"{sha}\n" for sha in boundary))
    git(scratch, "update-ref", BUNDLE_REF, commit)
    exclude = [f"^{base}"] if base else []
    refs = [BUNDLE_REF]
    if boundary:
        bundled = set(git(scratch, "rev-list", commit, *exclude, timeout=GIT_TIMEOUT).split())
        for sha in sorted(bundled.intersection(boundary)):
            git(scratch, "update-ref", f"{SHALLOW_REFS}{sha}", sha)
            refs.append(f"{SHALLOW_REFS}{sha}")
    # One delta-search thread: threads share out the work by timing, and the same commits must
    # give the same bytes for the name to deduplicate.
    git(
        scratch,
        *("-c", "pack.threads=1", "bundle", "create", "--quiet", str(target), *refs),
        *exclude,
        timeout=GIT_TIMEOUT,
    )


def shallow_boundary(shallow: Path) -> list[str]:
    """The commits a repository's `shallow` file names (empty when there is none): its history
    ends with them."""
    try:
        return sorted(set(shallow.read_text().split()))
    except FileNotFoundError:
        return []


def _git_path(repo: Path, name: str) -> str:
    return git(repo, "rev-parse", "--path-format=absolute", "--git-path", name).strip()
