"""`SnapshotCache`: a worker's local copy of snapshots, and fresh checkouts made from it.

Layout of the cache directory, which several processes may share:

    bundles/sha256-<hex>.bundle   bundles as downloaded, checked against their sha256
    repos/<root sha256>.git       one bare repository per chain (named by its full bundle);
                                  `refs/snapshots/<commit>` marks each bundle imported whole
    locks/<root sha256>.lock      flock held while a chain's bundles are fetched and imported
    locks/<root sha256>.use       flock held shared by everyone using the chain's repository
    locks/bundles.use             flock held shared while bundles are fetched and imported

A checkout borrows the cached repository's objects (`git clone --shared`), so making one costs
writing the working tree only; it stays valid as long as the cached repository does (they never
drop objects: gc is off, every imported head keeps a ref). Repositories and bundles unused for
longer than the retention are pruned (`codeyard.workspace.cache_pruning`), but never while a
`.use` lock is held: hold `using(ref)` for as long as a checkout of it lives. Using a repository
or a bundle sets its mtime, which is what the pruning measures.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats.errors
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus.object_reader import ObjectReader, UnreadableObject
from codeyard.schemas.model import SnapshotBundle, SnapshotRef
from codeyard.workspace.file_lock import FileLock
from codeyard.workspace.git import fetch_if_missing, git
from codeyard.workspace.snapshots import (
    BUNDLE_REF,
    GIT_TIMEOUT,
    SHALLOW_REFS,
    SnapshotError,
    SnapshotMissing,
    file_sha256,
    shallow_boundary,
)
from codeyard.workspace.use_lock import in_use

log = logging.getLogger(__name__)

IMPORTED_REFS = "refs/snapshots/"
BUNDLES_USE_LOCK = "bundles.use"


def use_lock_path(root: Path, chain: str) -> Path:
    """The lock file users of the repository of chain `chain` (root sha256) hold shared."""
    return root / "locks" / f"{chain}.use"


class SnapshotCorrupt(SnapshotError):
    pass


class DownloadStalled(SnapshotError):
    pass


class SnapshotCache:
    """Checkouts of snapshots, downloading only the bundles the cache lacks.

    `stall_timeout`: a download that receives nothing for this long is abandoned (the object
    store has no end-to-end timeout of its own).
    """

    def __init__(self, store: ObjectStore, root: Path, stall_timeout: float = 60.0) -> None:
        self.store = store
        self.root = root
        self.stall_timeout = stall_timeout
        self.downloaded: list[str] = []  # bundle names this instance fetched from the store
        self._locks: dict[str, FileLock] = {}

    def repository(self, ref: SnapshotRef) -> Path:
        return self.root / "repos" / f"{ref.root.sha256}.git"

    def bundle_path(self, bundle: SnapshotBundle) -> Path:
        return self.root / "bundles" / f"sha256-{bundle.sha256}.bundle"

    async def checkout(self, ref: SnapshotRef, dest: Path) -> Path:
        """A fresh working copy of `ref.head` at `dest` (absent or empty), HEAD detached there.

        It borrows the cached repository's objects: make and use it inside `using(ref)`, or
        the cache may prune the repository once it has been unused for the retention."""
        async with self.using(ref) as repository:
            await asyncio.to_thread(_clone, repository, ref.head, dest)
        return dest

    @asynccontextmanager
    async def using(self, ref: SnapshotRef) -> AsyncIterator[Path]:
        """`prepare(ref)`, and the repository kept from pruning until the block ends."""
        async with in_use(use_lock_path(self.root, ref.root.sha256)):
            repository = await self.prepare(ref)
            try:
                yield repository
            finally:  # last used now, when the user is done with it
                await asyncio.to_thread(os.utime, repository)

    async def prepare(self, ref: SnapshotRef) -> Path:
        """The cached bare repository holding `ref.head`, importing whatever it lacks."""
        repository = self.repository(ref)
        async with in_use(use_lock_path(self.root, ref.root.sha256)), self._lock(ref.root.sha256):
            imported = await asyncio.to_thread(_imported_heads, repository)
            # the newest bundle already imported has the history of all before it
            start = max(
                (i + 1 for i, bundle in enumerate(ref.bundles) if bundle.head in imported),
                default=0,
            )
            if start < len(ref.bundles):
                async with in_use(self.root / "locks" / BUNDLES_USE_LOCK):
                    for bundle in ref.bundles[start:]:
                        path = await self._bundle_file(bundle)
                        await asyncio.to_thread(_import, repository, path, bundle.head)
            await asyncio.to_thread(os.utime, repository)  # used now: pruning measures this
        return repository

    def _lock(self, key: str) -> FileLock:
        if key not in self._locks:
            self._locks[key] = FileLock(self.root / "locks" / f"{key}.lock")
        return self._locks[key]

    async def _bundle_file(self, bundle: SnapshotBundle) -> Path:
        """The bundle on local disk, verified; downloaded when missing or damaged."""
        path = self.bundle_path(bundle)
        if await asyncio.to_thread(path.exists):
            if await asyncio.to_thread(file_sha256, path) == (bundle.sha256, bundle.size):
                await asyncio.to_thread(os.utime, path)  # used now: pruning measures this
                return path
            log.warning("cached bundle %s is damaged: downloading it again", path)
            await asyncio.to_thread(path.unlink, True)
        await self._download(bundle, path)
        return path

    async def _download(self, bundle: SnapshotBundle, path: Path) -> None:
        # a temporary name, renamed once verified: readers never see a partial bundle
        partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        try:
            file = await asyncio.to_thread(partial.open, "wb")
            with file:
                await self._receive(bundle, file, partial)
            actual = await asyncio.to_thread(file_sha256, partial)
            if actual != (bundle.sha256, bundle.size):
                raise SnapshotCorrupt(
                    f"bundle {bundle.name} from the object store has sha256 {actual[0]} and "
                    f"{actual[1]} bytes, expected {bundle.sha256} and {bundle.size}"
                )
            await asyncio.to_thread(os.replace, partial, path)
        finally:
            await asyncio.to_thread(partial.unlink, True)
        self.downloaded.append(bundle.name)
        log.info("downloaded snapshot bundle %s (%d bytes)", bundle.name, bundle.size)

    async def _receive(
        self, bundle: SnapshotBundle, file: io.BufferedIOBase, partial: Path
    ) -> None:
        """The bundle written into `file` chunk by chunk, watched for progress."""
        reading = ObjectReader.of(self.store).read_into(bundle.name, file)
        receiving = asyncio.ensure_future(reading)
        try:
            received = 0
            while not (await asyncio.wait({receiving}, timeout=self.stall_timeout))[0]:
                size = (await asyncio.to_thread(partial.stat)).st_size
                if size == received:
                    raise await self._stalled(bundle, partial)
                received = size
            receiving.result()
        except ObjectNotFoundError:
            raise SnapshotMissing(bundle.name) from None
        except UnreadableObject as exc:
            raise SnapshotCorrupt(f"bundle {bundle.name}: {exc}") from exc
        except nats.errors.TimeoutError:  # a chunk asked for and not answered
            raise await self._stalled(bundle, partial) from None
        finally:
            receiving.cancel()  # no-op once done; otherwise it must stop writing into `file`

    @staticmethod
    async def _stalled(bundle: SnapshotBundle, partial: Path) -> DownloadStalled:
        size = (await asyncio.to_thread(partial.stat)).st_size
        return DownloadStalled(
            f"download of {bundle.name} stalled at {size} of {bundle.size} bytes"
        )


def _imported_heads(repository: Path) -> set[str]:
    if not (repository / "HEAD").exists():
        return set()
    listing = git(repository, "for-each-ref", "--format=%(refname)", IMPORTED_REFS)
    return {line.removeprefix(IMPORTED_REFS) for line in listing.split()}


def _import(repository: Path, bundle: Path, head: str) -> None:
    if not (repository / "HEAD").exists():
        repository.parent.mkdir(parents=True, exist_ok=True)
        git(repository.parent, "init", "--quiet", "--bare", repository.name)
        # objects are only ever added: checkouts borrow them through alternates
        git(repository, "config", "gc.auto", "0")
    # A snapshot of a shallow repository: its history ends where the bundle says (SHALLOW_REFS).
    heads = git(repository, "bundle", "list-heads", str(bundle), timeout=GIT_TIMEOUT).split("\n")
    ends = [line.split()[0] for line in heads if f" {SHALLOW_REFS}" in line]
    if ends:
        shallow = repository / "shallow"
        known = shallow_boundary(shallow)
        written = shallow.with_name(f"shallow.{uuid.uuid4().hex}.part")
        written.write_text("".join(f"{sha}\n" for sha in sorted({*known, *ends})))
        os.replace(written, shallow)  # whole or not at all, for whoever reads it meanwhile
    # the ref is written after the objects are in, so it marks a complete import
    git(
        repository,
        *("fetch", "--quiet", "--no-tags", str(bundle), f"{BUNDLE_REF}:{IMPORTED_REFS}{head}"),
        timeout=GIT_TIMEOUT,
    )


def _clone(repository: Path, head: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    git(
        dest.parent,
        *("clone", "--quiet", "--shared", "--no-checkout", str(repository), str(dest)),
        timeout=GIT_TIMEOUT,
    )
    # git clones a shallow repository (a snapshot of one) as a remote one, not shared, and
    # takes only its branches: the head, under refs/snapshots/, is fetched then
    fetch_if_missing(dest, head, timeout=GIT_TIMEOUT)
    git(dest, "checkout", "--quiet", "--detach", head, timeout=GIT_TIMEOUT)
