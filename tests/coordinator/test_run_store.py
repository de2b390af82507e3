"""Runs in the KV bucket and their journals: what is saved is what a new leader loads, however
often it changed and however it was written (journal entries, checkpoints)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest

from codeyard.bus import Bus, StaleRevision
from codeyard.bus.kv_scan import messages_after
from codeyard.bus.subjects import (
    JOURNAL_STREAM,
    RUNS_BUCKET,
    journal_events_subject,
    journal_subject,
)
from codeyard.coordinator.run_store import CheckpointPolicy, RunStore, StoredRun, header_key
from codeyard.schemas.model import Run, RunState, Task, TaskState
from tests.coordinator.plans import new_run, spec
from tests.coordinator.store_faults import DiesBefore, dies_before_the_header


def run_with_tasks(run_id: str, count: int) -> Run:
    tasks = {f"t{i}": Task(spec=spec(f"t{i}")) for i in range(count)}
    return msgspec.structs.replace(new_run(), run_id=run_id, tasks=tasks)


CHECKPOINTS_ONLY = CheckpointPolicy(max_entries=0)


async def save(
    bus: Bus, store: RunStore, stored: StoredRun, task_ids: list[str], events: Sequence[bytes] = ()
) -> None:
    """One coordinator step's write of the run, compaction included."""
    for checkpointed in await store.confirm(
        bus.pipeline, [await store.save(stored, task_ids, bus.pipeline, events)]
    ):
        await store.compact(checkpointed)


def next_attempt(stored: StoredRun, task_id: str) -> None:
    task = stored.run.tasks[task_id]
    stored.run.tasks[task_id] = msgspec.structs.replace(task, attempt=task.attempt + 1)


async def journal_length(bus: Bus, run_id: str) -> int:
    subject = journal_subject(run_id)
    info = await bus.js.stream_info(JOURNAL_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


@pytest.mark.parametrize("policy", [CheckpointPolicy(), CHECKPOINTS_ONLY], ids=["journal", "kv"])
async def test_a_loaded_run_has_the_latest_value_of_every_task(
    bus: Bus, policy: CheckpointPolicy
) -> None:
    store = await RunStore.open(bus.js, policy)
    stored = StoredRun(run_with_tasks("run1", 300))
    await save(bus, store, stored, list(stored.run.tasks))
    for round_ in range(5):  # many superseded values per key must not confuse the load
        for task_id in list(stored.run.tasks)[: 100 * (round_ % 3 + 1)]:
            next_attempt(stored, task_id)
        await save(bus, store, stored, list(stored.run.tasks))

    loaded = await asyncio.wait_for(store.load("run1", tasks=True), 20)  # a hang is a failure

    assert loaded is not None
    assert loaded.run == stored.run
    assert loaded.revisions == stored.revisions


async def test_a_header_loads_without_its_tasks_and_unknown_runs_are_none(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    await save(bus, store, StoredRun(run_with_tasks("run1", 3)), ["t0", "t1", "t2"])
    await save(bus, store, StoredRun(run_with_tasks("run2", 0)), [])

    header = await store.load("run1")
    empty = await store.load("run2", tasks=True)

    assert header is not None
    assert header.run.tasks == {}
    assert empty is not None
    assert empty.run.tasks == {}
    assert await store.load("run3", tasks=True) is None
    assert [run.run_id for run in await store.headers()] == ["run1", "run2"]


async def test_no_headers_in_an_empty_bucket(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    assert await asyncio.wait_for(store.headers(), 20) == []


@pytest.mark.parametrize("policy", [CheckpointPolicy(), CHECKPOINTS_ONLY], ids=["journal", "kv"])
async def test_a_write_of_a_deposed_leader_is_refused(bus: Bus, policy: CheckpointPolicy) -> None:
    """Its journal entry names an older sequence, or its KV write an older revision."""
    store = await RunStore.open(bus.js, policy)
    leader = StoredRun(run_with_tasks("run1", 1))
    await save(bus, store, leader, ["t0"])
    deposed = await store.load("run1", tasks=True)
    assert deposed is not None
    leader.run.tasks["t0"] = msgspec.structs.replace(leader.run.tasks["t0"], state=TaskState.READY)
    await save(bus, store, leader, ["t0"])

    next_attempt(deposed, "t0")
    with pytest.raises(StaleRevision):
        await save(bus, store, deposed, ["t0"])
    loaded = await store.load("run1", tasks=True)
    assert loaded is not None
    assert loaded.run.tasks == leader.run.tasks


async def test_a_run_is_its_last_checkpoint_plus_the_journal_after_it(bus: Bus) -> None:
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entries=3))
    stored = StoredRun(run_with_tasks("run1", 10))
    await save(bus, store, stored, list(stored.run.tasks))  # a new run: entry and header
    for step in range(9):  # three entries, then a checkpoint, and so on
        next_attempt(stored, f"t{step}")
        await save(bus, store, stored, [f"t{step}"])

    loaded = await store.load("run1", tasks=True)

    assert loaded is not None
    assert loaded.run.tasks == stored.run.tasks
    assert loaded.run.journal_seq == stored.checkpoint_seq > 0  # the checkpoint names its entry
    assert stored.entries == 2  # two steps journaled after the last checkpoint
    assert await journal_length(bus, "run1") == 3  # they and the one the checkpoint names


async def test_a_new_leader_appends_after_the_journal_it_loaded(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    first = StoredRun(run_with_tasks("run1", 2))
    await save(bus, store, first, ["t0", "t1"])
    next_attempt(first, "t0")
    await save(bus, store, first, ["t0"])

    second = await store.load("run1", tasks=True)
    assert second is not None
    next_attempt(second, "t1")
    await save(bus, store, second, ["t1"])
    third = await store.load("run1", tasks=True)

    assert third is not None
    assert {t: task.attempt for t, task in third.run.tasks.items()} == {"t0": 1, "t1": 1}


async def test_a_step_too_big_for_one_entry_is_several_loaded_whole(bus: Bus) -> None:
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=1000))
    stored = StoredRun(run_with_tasks("run1", 10))

    await save(bus, store, stored, list(stored.run.tasks))

    assert await journal_length(bus, "run1") > 2
    assert set(stored.revisions) == {header_key("run1")}  # the header only: no checkpoint
    loaded = await store.load("run1", tasks=True)
    assert loaded is not None
    assert loaded.run.tasks == stored.run.tasks


async def test_a_step_whose_last_entry_never_landed_is_not_loaded(bus: Bus) -> None:
    """Its writer died between the entries of a big step: a new leader loads the run as it was
    before that step, and its own steps load after the orphaned entries."""
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=1000))
    stored = StoredRun(run_with_tasks("run1", 10))
    await save(bus, store, stored, list(stored.run.tasks))
    before = msgspec.structs.replace(stored.run, tasks=dict(stored.run.tasks))
    for task_id in stored.run.tasks:
        next_attempt(stored, task_id)
    stored.run.goal = "changed by the step that never ended"
    cut_short = await store.save(stored, list(stored.run.tasks), bus.pipeline)
    assert cut_short.entries  # more entries were to follow the first one
    await bus.pipeline.wait([cut_short.sent.sent], 5)  # type: ignore[union-attr, list-item]

    successor = await store.load("run1", tasks=True)
    assert successor is not None
    assert successor.run == before
    next_attempt(successor, "t3")
    await save(bus, store, successor, ["t3"])
    loaded = await store.load("run1", tasks=True)

    assert loaded is not None
    assert loaded.run.goal == before.goal
    assert {t: task.attempt for t, task in loaded.run.tasks.items() if task.attempt} == {"t3": 1}


async def test_a_checkpoint_cut_short_before_its_header_loads_whole(bus: Bus) -> None:
    """Its tasks landed in KV and its header did not: the step's journal entry, stored first,
    is replayed over them, header changes included."""
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entries=2))
    stored = StoredRun(run_with_tasks("run1", 3))
    await save(bus, store, stored, ["t0", "t1", "t2"])  # entry 1, and the new run's header
    next_attempt(stored, "t1")
    await save(bus, store, stored, ["t1"])  # entry 2
    stored.run.tasks["t0"].state = TaskState.MERGED
    stored.run.state = RunState.INTEGRATING
    step = await store.save(stored, ["t0"], bus.pipeline)  # entry 3, then a checkpoint
    assert step.checkpoint
    with pytest.raises(ConnectionError):
        await store.confirm(dies_before_the_header(bus, "run1"), [step])
    kv = await bus.js.key_value(RUNS_BUCKET)
    landed = await kv.get("run1.t0")
    assert landed.value is not None
    assert msgspec.json.decode(landed.value, type=Task).state is TaskState.MERGED

    loaded = await store.load("run1", tasks=True)

    assert loaded is not None
    assert loaded.run.state is RunState.INTEGRATING  # from the entry: the header still says not
    assert loaded.run.tasks == stored.run.tasks


async def test_an_ended_run_says_so_in_its_header(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    stored = StoredRun(run_with_tasks("run1", 3))
    await save(bus, store, stored, ["t0", "t1", "t2"])
    stored.run.state = RunState.DONE
    stored.run.tasks["t2"].state = TaskState.MERGED
    await save(bus, store, stored, ["t2"])  # journaled, with the header written too

    [header] = await store.headers()
    loaded = await store.load("run1", tasks=True)

    assert header.state is RunState.DONE  # a new leader does not reopen it
    assert loaded is not None
    assert loaded.run.tasks["t2"].state is TaskState.MERGED


async def test_an_ended_runs_journal_is_purged_whole(bus: Bus) -> None:
    """An ended run is checkpointed by its last step, and nothing of its journal is kept: no
    later step would ever checkpoint it, and its entries would stay on the server for good."""
    store = await RunStore.open(bus.js)
    stored = StoredRun(run_with_tasks("run1", 3))
    await save(bus, store, stored, ["t0", "t1", "t2"])
    for task_id in ("t0", "t1"):
        stored.run.tasks[task_id].state = TaskState.MERGED
        await save(bus, store, stored, [task_id])
    assert await journal_length(bus, "run1") > 1
    stored.run.state = RunState.DONE
    stored.run.tasks["t2"].state = TaskState.MERGED
    await save(bus, store, stored, ["t2"])

    loaded = await store.load("run1", tasks=True)

    assert await journal_length(bus, "run1") == 0
    assert loaded is not None
    assert loaded.run.state is RunState.DONE
    assert loaded.run.tasks == stored.run.tasks


async def test_an_unreadable_header_is_left_out_of_the_headers(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    await save(bus, store, StoredRun(run_with_tasks("run1", 1)), ["t0"])
    kv = await bus.js.key_value(RUNS_BUCKET)
    await kv.put(header_key("run2"), b'{"run_id": "run2", "goal": null}')

    assert [run.run_id for run in await store.headers()] == ["run1"]


async def test_a_header_is_written_only_once_the_rest_of_the_step_is_stored(bus: Bus) -> None:
    store = await RunStore.open(bus.js)
    stored = StoredRun(run_with_tasks("run1", 2))

    step = await store.save(stored, ["t0", "t1"], bus.pipeline)

    assert step.sent is not None
    assert step.sent.kind == "journal"
    assert step.header is not None  # a new run's header, sent once its journal entry is stored
    assert await store.headers() == []
    await store.confirm(bus.pipeline, [step])
    assert [run.run_id for run in await store.headers()] == ["run1"]


async def test_a_journal_left_without_a_header_is_ignored_by_the_run_submitted_again(
    bus: Bus,
) -> None:
    """A submission that stopped between its journal entry and its header leaves an entry no
    run owns; the run submitted again starts after it, and its first checkpoint purges it."""
    store = await RunStore.open(bus.js)
    crashed = StoredRun(run_with_tasks("run1", 2))
    step = await store.save(crashed, ["t0", "t1"], bus.pipeline)
    await bus.pipeline.wait([step.sent.sent], 5)  # type: ignore[union-attr, list-item]

    again = await store.new_run(run_with_tasks("run1", 1))
    await save(bus, store, again, ["t0"])

    loaded = await store.load("run1", tasks=True)
    assert loaded is not None
    assert list(loaded.run.tasks) == ["t0"]
    assert await journal_length(bus, "run1") == 2
    loaded.run.state = RunState.DONE  # an ended run is checkpointed, its journal purged
    await save(bus, store, loaded, [])
    assert await journal_length(bus, "run1") == 0


async def test_a_late_entry_of_a_deposed_leader_fences_out_the_run_submitted_again(
    bus: Bus,
) -> None:
    """Nothing is purged when a run is submitted again: an entry that lands after the new run
    read where its journal starts makes the new run's first write fail, rather than the new
    run's entries being purged or mixed with it."""
    store = await RunStore.open(bus.js)
    again = await store.new_run(run_with_tasks("run1", 1))
    late = await store.save(StoredRun(run_with_tasks("run1", 2)), ["t0", "t1"], bus.pipeline)
    await bus.pipeline.wait([late.sent.sent], 5)  # type: ignore[union-attr, list-item]

    with pytest.raises(StaleRevision):
        await save(bus, store, again, ["t0"])
    assert await store.headers() == []


async def test_a_writer_that_lost_its_lease_stops_before_a_new_runs_header(bus: Bus) -> None:
    """Nothing fences the first header of a run: a new leader that loaded the runs before it
    landed would never know the run. So the writer checks its lease once more just before."""
    store = await RunStore.open(bus.js)
    step = await store.save(StoredRun(run_with_tasks("run1", 1)), ["t0"], bus.pipeline)

    def lease_lost() -> None:
        raise RuntimeError("lease not renewed in time")

    with pytest.raises(RuntimeError):
        await store.confirm(bus.pipeline, [step], before_headers=lease_lost)
    assert await store.headers() == []  # the submission was not accepted: it is retried


@pytest.mark.parametrize("policy", [CheckpointPolicy(), CHECKPOINTS_ONLY], ids=["journal", "kv"])
async def test_a_loaded_run_holds_the_events_of_its_last_step(
    bus: Bus, policy: CheckpointPolicy
) -> None:
    """They may have been lost while the step's entry was not: the loader publishes them
    again. The events of earlier steps were stored before the next step was taken."""
    store = await RunStore.open(bus.js, policy)
    stored = StoredRun(run_with_tasks("run1", 2))
    await save(bus, store, stored, ["t0", "t1"], [b'{"event":1}'])
    next_attempt(stored, "t0")
    await save(bus, store, stored, ["t0"], [b'{"event":2}', b'{"event":3}'])

    loaded = await store.load("run1", tasks=True)

    assert loaded is not None
    assert loaded.last_events == [b'{"event":2}', b'{"event":3}']
    assert loaded.run.tasks == stored.run.tasks
    await save(bus, store, loaded, ["t1"])
    assert (await store.load("run1", tasks=True)).last_events == []  # type: ignore[union-attr]


async def test_the_events_of_a_step_in_several_entries_are_loaded_only_once_it_ended(
    bus: Bus,
) -> None:
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=1000))
    stored = StoredRun(run_with_tasks("run1", 10))
    await save(bus, store, stored, list(stored.run.tasks), [b'{"event":1}'])
    assert await journal_length(bus, "run1") > 2
    whole = await store.load("run1", tasks=True)
    assert whole is not None
    assert whole.last_events == [b'{"event":1}']

    for task_id in stored.run.tasks:
        next_attempt(stored, task_id)
    cut_short = await store.save(stored, list(stored.run.tasks), bus.pipeline, [b'{"event":2}'])
    await bus.pipeline.wait([cut_short.sent.sent], 5)  # type: ignore[union-attr, list-item]
    loaded = await store.load("run1", tasks=True)

    assert loaded is not None
    assert loaded.last_events == []  # the step never happened: its events are not to be told


async def test_a_task_record_that_fills_an_entry_leaves_the_events_one_of_their_own(
    bus: Bus,
) -> None:
    """The coordinator keeps a task's outputs in its record up to about the server's message
    limit. With the step's events in the same entry, that entry was over the limit: the step
    failed at every try, and the coordinator reloaded its runs for ever."""
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=2000))
    stored = StoredRun(run_with_tasks("run1", 1))
    stored.run.tasks["t0"].test_output = "x" * 1000  # the entry: about 1,900 bytes
    events = [b'{"event":"%s"}' % (b"e" * 200)]
    await save(bus, store, stored, ["t0"], events)

    subject = journal_subject("run1")
    sizes = [len(data) async for _, data in messages_after(bus.js, JOURNAL_STREAM, subject, 0)]
    loaded = await store.load("run1", tasks=True)

    assert len(sizes) == 2, sizes
    assert max(sizes) <= 2000, sizes
    assert loaded is not None
    assert loaded.run.tasks == stored.run.tasks
    assert loaded.last_events == events


def many_events(count: int) -> list[bytes]:
    return [b'{"event":%d,"text":"%s"}' % (index, b"x" * 300) for index in range(count)]


async def beside_length(bus: Bus, run_id: str) -> int:
    """How many events are kept beside the run's journal."""
    subject = journal_events_subject(run_id)
    info = await bus.js.stream_info(JOURNAL_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


@pytest.mark.parametrize(
    "policy",
    [CheckpointPolicy(max_entry_bytes=2000), CheckpointPolicy(max_entry_bytes=2000, max_entries=0)],
    ids=["journal", "kv"],
)
async def test_events_too_many_for_their_step_entry_are_kept_beside_it(
    bus: Bus, policy: CheckpointPolicy
) -> None:
    """Cancelling a run of thousands of tasks tells more than one entry holds; those events are
    loaded with the step all the same, so that a new leader can publish them again."""
    store = await RunStore.open(bus.js, policy)
    stored = StoredRun(run_with_tasks("run1", 2))
    await save(bus, store, stored, ["t0", "t1"], many_events(1))
    next_attempt(stored, "t0")
    events = many_events(5)  # over half an entry

    await save(bus, store, stored, ["t0"], events)
    loaded = await store.load("run1", tasks=True)

    subject = journal_subject("run1")
    sizes = [len(data) async for _, data in messages_after(bus.js, JOURNAL_STREAM, subject, 0)]
    assert max(sizes) <= 2000, sizes
    assert loaded is not None
    assert loaded.run.tasks == stored.run.tasks
    assert loaded.last_events == events
    assert await beside_length(bus, "run1") == len(events)


async def test_events_of_a_step_whose_entry_was_not_stored_are_never_loaded(bus: Bus) -> None:
    """The step did not happen: its events must not be told, even once stored beside the
    journal (they are stored before the entry that names them)."""
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=2000))
    stored = StoredRun(run_with_tasks("run1", 1))
    await save(bus, store, stored, ["t0"], many_events(1))
    next_attempt(stored, "t0")
    fault = DiesBefore(bus, journal_subject("run1"))

    with pytest.raises(ConnectionError):
        await store.save(stored, ["t0"], fault, many_events(5))
    loaded = await store.load("run1", tasks=True)

    assert fault.died
    assert await beside_length(bus, "run1") == 5
    assert loaded is not None
    assert loaded.last_events == many_events(1)
    assert loaded.run.tasks["t0"].attempt == stored.run.tasks["t0"].attempt - 1


async def test_events_kept_beside_a_journal_are_purged_with_it(bus: Bus) -> None:
    """Those of the run's latest step that had any are kept while the run goes on (a load may
    need them); none once it ended."""
    store = await RunStore.open(bus.js, CheckpointPolicy(max_entry_bytes=2000, max_entries=0))
    stored = StoredRun(run_with_tasks("run1", 1))
    await save(bus, store, stored, ["t0"])
    for _ in range(2):
        next_attempt(stored, "t0")
        await save(bus, store, stored, ["t0"], many_events(5))
    next_attempt(stored, "t0")
    await save(bus, store, stored, ["t0"])
    kept = await beside_length(bus, "run1")

    stored.run.state = RunState.DONE
    await save(bus, store, stored, ["t0"], many_events(5))

    assert kept == 5
    assert await beside_length(bus, "run1") == 0
    assert await journal_length(bus, "run1") == 0
