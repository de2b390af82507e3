"""A coder's large patch: sent inline by the coder, stored in `cy_artifacts` by the coordinator
before it applies the result, so that the task's record and the tester's work item carry only
its name. Real nats-server, real coordinator, real workers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from prometheus_client import REGISTRY

from codeyard.bus import Bus, EmbeddedNats, PullWorker
from codeyard.bus.credentials import Credentials
from codeyard.bus.subjects import (
    ARTIFACTS_BUCKET,
    WORK_STREAM,
    consumer_name,
    result_subject,
)
from codeyard.coordinator.run_store import RunStore
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    Patch,
    Result,
    Task,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    TestRequest,
    WorkItem,
    decode,
    encode,
)
from codeyard.workspace.artifact_ages import modified_at
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, PATCH_PREFIX, inline, offload
from codeyard.workspace.repo_localizer import RepoLocalizer
from codeyard.workspace.snapshot_cache import SnapshotCache
from codeyard.workspace.snapshots import artifact_store
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    patched,
    run_events,
    running_coordinator,
    status,
    submit,
    wait_for_task,
    work_for_coders,
)

SERVICES = Credentials("services", "services-password")
CODER = Credentials("coder", "coder-password")


def big_diff(marker: str) -> str:
    body = "".join(f"+{marker} line {n}\n" for n in range(INLINE_PATCH_CHARS // 10))
    return f"--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,{INLINE_PATCH_CHARS // 10} @@\n{body}"


BIG = big_diff("big")
ONE_TASK = [TaskSpec(id="t1", title="a big change")]


async def patch_names(store: ObjectStore) -> list[str]:
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:  # an empty bucket
        return []
    return sorted(info.name for info in infos if info.name and info.name.startswith(PATCH_PREFIX))


async def queued_for_tester(bus: Bus, expected: int) -> list[TestRequest]:
    """The tester's work items, taken off its queue: the `expected` ones, and any more that come
    within a second after them."""
    subscription = await bus.js.pull_subscribe_bind(
        durable=consumer_name("tester"), stream=WORK_STREAM
    )
    items: list[TestRequest] = []
    try:
        while True:
            try:
                msgs = await subscription.fetch(expected + 1, timeout=10 if expected else 1)
            except nats.errors.TimeoutError:
                return items
            for msg in msgs:
                items.append(decode(msg.data, TestRequest))
                await msg.ack()
            expected = max(0, expected - len(msgs))
    finally:
        await subscription.unsubscribe()


async def stored_task(bus: Bus, run_id: str, task_id: str) -> Task:
    """The task as `cy_runs` and the journal hold it (not the leader's copy in memory)."""
    stored = await (await RunStore.open(bus.js)).load(run_id, tasks=True)
    assert stored is not None
    return stored.run.tasks[task_id]


def assert_names_big(patch: Patch | None) -> Patch:
    assert patch is not None
    assert patch.text == ""
    assert patch.object_name.startswith(PATCH_PREFIX)
    assert patch.sha256 == hashlib.sha256(BIG.encode()).hexdigest()
    return patch


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of its own where the coder may publish anything but to an object store
    (`$O.>`: its chunks and metadata) and the services may do anything."""
    directory = tmp_path_factory.mktemp("coder-cannot-write")
    config = directory / "nats.conf"
    config.write_text(
        f"jetstream {{ store_dir: {str(directory / 'js')!r} }}\n"
        "authorization { users: [\n"
        f'  {{ user: "{SERVICES.user}", password: "{SERVICES.password}" }}\n'
        f'  {{ user: "{CODER.user}", password: "{CODER.password}",\n'
        '    permissions: { publish: { deny: ["$O.>"] } } }\n'
        "] }\n"
    )
    with EmbeddedNats(directory, config_file=config) as server:
        yield server.url


async def connected(url: str, credentials: Credentials) -> Bus:
    return await Bus.connect(
        url, name=f"test-{credentials.user}", credentials=credentials, topology=TEST_TOPOLOGY
    )


async def test_a_coder_that_cannot_write_the_store_delivers_a_big_patch_by_reference(
    secured: str, tmp_path: Path
) -> None:
    services = await connected(secured, SERVICES)
    coder = await connected(secured, CODER)
    try:
        await services.setup()
        store = await artifact_store(services.js)
        coders_store = await artifact_store(coder.js)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await coder.js.publish(f"$O.{ARTIFACTS_BUCKET}.C.probe", b"x", timeout=1)

        async def code(item: WorkItem) -> Result:
            assert isinstance(item, CodeRequest)
            return CodeResult(patch=Patch(text=BIG), summary="a big change")

        # as `codeyard worker coder` runs it
        localized = RepoLocalizer(code, SnapshotCache(coders_store, tmp_path / "cache"))
        stop = asyncio.Event()
        coding = asyncio.create_task(PullWorker(coder, "coder", localized).run(stop, grace=1))
        coordinator = Coordinator(services, name="coord-big", artifacts=store)
        try:
            async with running_coordinator(coordinator):
                await submit(services, ONE_TASK, run_id="big")
                run = await wait_for_task(services, "big", "t1", TaskState.TESTING)
                [test_request] = await queued_for_tester(services, 1)
        finally:
            stop.set()
            await asyncio.wait_for(coding, 10)

        reference = assert_names_big(run.tasks["t1"].patch)
        assert (await stored_task(services, "big", "t1")).patch == reference
        assert test_request.patch == reference
        assert await patch_names(store) == [reference.object_name]
        assert (await inline(store, reference)).text == BIG
        assert run.tasks["t1"].summary == "a big change"
    finally:
        await coder.close()
        await services.close()


async def test_the_same_result_delivered_twice_stores_its_patch_once_and_applies_once(
    bus: Bus,
) -> None:
    store = await artifact_store(bus.js)
    coordinator = Coordinator(bus, name="coord-twice", artifacts=store)
    async with running_coordinator(coordinator):
        await submit(bus, ONE_TASK, run_id="twice")
        [item] = await work_for_coders(bus, 1)
        result = encode(patched(item, BIG))
        # stored twice (no Nats-Msg-Id to drop the second): as a redelivery after a lost ack
        await bus.js.publish(result_subject("coder"), result)
        await wait_for_task(bus, "twice", "t1", TaskState.TESTING)
        [name] = await patch_names(store)
        first_stored = await modified_at(bus.js, ARTIFACTS_BUCKET, name)
        await bus.js.publish(result_subject("coder"), result)
        for _ in range(200):
            if coordinator.stats.results >= 2:
                break
            await asyncio.sleep(0.05)
        assert coordinator.stats.results == 2
        run = await status(bus, "twice")
        test_items = await queued_for_tester(bus, 1)

    assert await patch_names(store) == [name]
    again = await modified_at(bus.js, ARTIFACTS_BUCKET, name)
    assert first_stored is not None
    assert again is not None
    assert again > first_stored  # reused: its retention restarts
    task = run.tasks["t1"]
    # sent to the coder, then to the tester: once
    assert (task.state, task.attempt, task.dispatches) == (TaskState.TESTING, 1, 2)
    assert assert_names_big(task.patch).object_name == name
    assert [test_item.patch for test_item in test_items] == [task.patch]
    to_testing = [
        change.task_id
        for event in await run_events(bus, "twice")
        if isinstance(event, TaskStatesChanged)
        for change in event.changes
        if change.state is TaskState.TESTING
    ]
    assert to_testing == ["t1"]


async def test_an_older_coders_reference_is_applied_as_it_is(bus: Bus) -> None:
    store = await artifact_store(bus.js)
    async with running_coordinator(Coordinator(bus, name="coord-old", artifacts=store)):
        await submit(bus, ONE_TASK, run_id="old")
        [item] = await work_for_coders(bus, 1)
        reference = await offload(store, Patch(text=BIG))  # as a coder stored it before
        answer = msgspec.structs.replace(patched(item, ""), patch=reference)
        await bus.js.publish(result_subject("coder"), encode(answer))
        run = await wait_for_task(bus, "old", "t1", TaskState.TESTING)
        [test_request] = await queued_for_tester(bus, 1)

    assert run.tasks["t1"].patch == reference
    assert (await stored_task(bus, "old", "t1")).patch == reference
    assert test_request.patch == reference
    assert await patch_names(store) == [reference.object_name]


def held_results() -> float:
    """Results the coordinators of this process handed back, their patch not storable yet."""
    labels = {"outcome": "held"}
    return REGISTRY.get_sample_value("codeyard_coordinator_results_total", labels) or 0.0


async def test_a_patch_that_cannot_be_stored_yet_is_applied_once_the_store_is_back(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """The store away is not the result's fault: the result comes again until its patch is
    stored, and the other runs go on meanwhile."""
    caplog.set_level(logging.WARNING, logger="codeyard.coordinator.service")
    held_before = held_results()
    store = await artifact_store(bus.js)
    await bus.js.delete_object_store(ARTIFACTS_BUCKET)
    async with running_coordinator(Coordinator(bus, name="coord-away", artifacts=store)):
        await submit(bus, ONE_TASK, run_id="big")
        await submit(bus, ONE_TASK, run_id="small")
        items = {item.run_id: item for item in await work_for_coders(bus, 2)}
        for run_id, text in (("big", BIG), ("small", "+one line\n")):
            await bus.js.publish(result_subject("coder"), encode(patched(items[run_id], text)))

        await wait_for_task(bus, "small", "t1", TaskState.TESTING)
        for _ in range(200):
            handed_back = [r for r in caplog.records if "cannot store its patch" in r.message]
            if len(handed_back) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(handed_back) >= 3, "the result did not come again"
        assert (await status(bus, "big")).tasks["t1"].state is TaskState.CODING
        assert held_results() - held_before >= 3  # for an alert: no metric told it before

        await bus.setup()  # the store is back
        run = await wait_for_task(bus, "big", "t1", TaskState.TESTING)

    reference = assert_names_big(run.tasks["t1"].patch)
    assert (await inline(store, reference)).text == BIG
    assert (await stored_task(bus, "big", "t1")).patch == reference


async def test_a_coordinator_without_a_store_keeps_a_large_patch_inline(bus: Bus) -> None:
    async with running_coordinator(Coordinator(bus, name="coord-no-store")):
        await submit(bus, ONE_TASK, run_id="inline")
        [item] = await work_for_coders(bus, 1)
        await bus.js.publish(result_subject("coder"), encode(patched(item, BIG)))
        run = await wait_for_task(bus, "inline", "t1", TaskState.TESTING)
        [test_request] = await queued_for_tester(bus, 1)

    assert run.tasks["t1"].patch == Patch(text=BIG)
    assert test_request.patch == Patch(text=BIG)
    assert await patch_names(await artifact_store(bus.js)) == []
