"""Large patches travel through the object store (the coordinator stores them; workers only
read them); roles and the integrator see the text."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from nats.js.errors import NotFoundError

from codeyard.bus import Bus
from codeyard.bus.object_reader import ObjectReader, chunk_subject
from codeyard.coordinator.events import Merged
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    Patch,
    RepoRef,
    Result,
    Run,
    Task,
    TaskSpec,
    TestRequest,
    TestResult,
    Usage,
    WorkItem,
)
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator
from codeyard.workspace.patch_store import (
    INLINE_PATCH_CHARS,
    PatchMissing,
    by_reference,
    inline,
    offload,
)
from codeyard.workspace.repo_localizer import RepoLocalizer
from codeyard.workspace.snapshot_cache import SnapshotCache
from codeyard.workspace.snapshots import artifact_store
from tests.repositories import one_commit_repo

BIG = "".join(f"+line {n}\n" for n in range(INLINE_PATCH_CHARS // 8))


async def test_small_patches_stay_inline_and_large_ones_are_stored_once(bus: Bus) -> None:
    store = await artifact_store(bus.js)
    small = Patch(text="+one line\n")
    assert await offload(store, small) == small

    stored = await offload(store, Patch(text=BIG))
    again = await offload(store, Patch(text=BIG))
    assert stored.text == ""
    assert stored.object_name.startswith("patch/sha256-")
    assert again == stored
    assert len(msgspec.json.encode(stored)) < 200  # what the messages and records carry
    assert by_reference(stored)
    assert not by_reference(small)

    inlined = await inline(store, stored)
    assert inlined.text == BIG
    assert not by_reference(inlined)  # it keeps the name, but has its text now
    assert await inline(None, small) == small


async def test_a_patch_that_is_missing_or_altered_is_refused(bus: Bus) -> None:
    store = await artifact_store(bus.js)
    stored = await offload(store, Patch(text=BIG))
    with pytest.raises(PatchMissing, match="does not match"):
        await inline(store, msgspec.structs.replace(stored, sha256="0" * 64))
    with pytest.raises(PatchMissing, match="not in the object store"):
        await inline(store, Patch(object_name="patch/sha256-nothing", sha256="0" * 64))
    with pytest.raises(PatchMissing, match="not open"):
        await inline(None, stored)
    # its info still there, its chunks gone: the same to the reader as no patch
    reader = ObjectReader.of(store)
    nuid = (await reader.info(stored.object_name)).nuid
    await bus.js.purge_stream(reader.stream, subject=chunk_subject(reader.bucket, nuid))
    with pytest.raises(PatchMissing, match=r"cannot be read: .* chunk 1 of \d+ is missing"):
        await inline(store, stored)


async def test_a_worker_sends_large_patches_inline_and_reads_stored_ones_whole(
    bus: Bus, tmp_path: Path
) -> None:
    store = await artifact_store(bus.js)
    seen: list[str] = []

    async def role(item: WorkItem) -> Result:
        if isinstance(item, TestRequest):
            seen.append(item.patch.text)
            return TestResult(passed=True)
        return CodeResult(patch=Patch(text=BIG))

    worker = RepoLocalizer(role, SnapshotCache(store, tmp_path / "cache"))
    task = TaskSpec(id="t1", title="big change")
    coded = await worker(CodeRequest(run_id="r1", task_id="t1", attempt=1, goal="g", task=task))
    assert isinstance(coded, CodeResult)
    assert coded.patch == Patch(text=BIG)  # the coordinator stores it, not the coder
    with pytest.raises(NotFoundError):  # nats-py's answer for an empty bucket: nothing stored
        await store.list(ignore_deletes=True)

    stored = await offload(store, coded.patch)  # as the coordinator does
    await worker(TestRequest(run_id="r1", task_id="t1", attempt=1, task=task, patch=stored))
    assert seen == [BIG]


async def test_the_integrator_merges_a_stored_patch(bus: Bus, tmp_path: Path) -> None:
    store = await artifact_store(bus.js)
    repo = one_commit_repo(tmp_path / "user", {"README.md": "hello\n"})
    lines = "".join(f"line {n}\n" for n in range(INLINE_PATCH_CHARS // 8))
    (repo / "big.txt").write_text(lines)
    git(repo, "add", "-N", "big.txt")
    diff = git(repo, "diff")
    git(repo, "reset", "-q")
    (repo / "big.txt").unlink()

    integrator = GitIntegrator(tmp_path / "data", artifacts=store)
    stored = await offload(store, Patch(text=diff))
    task = Task(spec=TaskSpec(id="big", title="add big.txt"), patch=stored)
    run = Run(run_id="r1", goal="g", repo=RepoRef(path=str(repo)), tasks={"big": task})
    run.repo = await integrator.prepare(run)
    assert stored.object_name
    outcome = await integrator.merge(run, "big", 1)
    assert isinstance(outcome, Merged)
    assert outcome.repo is not None
    assert outcome.repo.bundles is not None  # the new head, published for the workers
    assert (Path(run.repo.snapshot) / "big.txt").read_text() == lines


async def test_a_coders_large_patch_needs_no_store(bus: Bus, tmp_path: Path) -> None:
    # The store away (here: gone) once cost the model's answer: the coder stored the patch.
    store = await bus.js.create_object_store("test-store-gone")
    await bus.js.delete_object_store("test-store-gone")
    spent = Usage(calls=1, prompt_tokens=900, completion_tokens=300, cost_usd=0.01)

    async def role(item: WorkItem) -> Result:
        return CodeResult(patch=Patch(text=BIG), usage=spent, model="coder-model")

    worker = RepoLocalizer(role, SnapshotCache(store, tmp_path / "cache"))
    task = TaskSpec(id="t1", title="big change")
    coded = await worker(CodeRequest(run_id="r1", task_id="t1", attempt=1, goal="g", task=task))

    assert isinstance(coded, CodeResult)
    assert (coded.patch, coded.usage, coded.model) == (Patch(text=BIG), spent, "coder-model")
