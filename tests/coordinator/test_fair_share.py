"""Sharing a cap on tasks in flight among open runs: the shares, and a coordinator using them."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codeyard.bus import Bus
from codeyard.coordinator.fair_share import fair_shares
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import (
    CodeResult,
    Patch,
    Result,
    ReviewResult,
    RunState,
    TaskSpec,
    TaskState,
    TestRequest,
    TestResult,
    WorkItem,
)
from tests.bus.test_worker import until
from tests.coordinator.harness import (
    running_coordinator,
    status,
    submit,
    wait_for_task,
    workers_of,
)


def test_equal_runs_share_equally() -> None:
    assert fair_shares({"a": 50, "b": 50}, total=8, per_run=8) == {"a": 4, "b": 4}


def test_what_a_small_run_leaves_goes_to_the_others() -> None:
    assert fair_shares({"big": 40, "small": 1, "mid": 3}, total=12, per_run=16) == {
        "small": 1,
        "mid": 3,
        "big": 8,
    }


def test_a_run_never_gets_more_than_its_own_capacity() -> None:
    assert fair_shares({"a": 100}, total=64, per_run=8) == {"a": 8}


def test_more_runs_than_the_cap_all_move() -> None:
    shares = fair_shares({f"r{i}": 5 for i in range(6)}, total=4, per_run=8)
    assert set(shares.values()) == {1}


def test_a_run_with_nothing_ready_keeps_one_slot() -> None:
    """It needs no more until a task becomes ready, and then gets its share at the next step."""
    assert fair_shares({"idle": 0, "busy": 30}, total=6, per_run=8) == {"idle": 1, "busy": 5}


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        fair_shares({"a": 1}, total=0, per_run=8)


@given(
    wants=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 50), max_size=12),
    total=st.integers(1, 64),
    per_run=st.integers(1, 16),
)
def test_shares_respect_the_cap_each_run_s_capacity_and_what_it_wants(
    wants: dict[str, int], total: int, per_run: int
) -> None:
    shares = fair_shares(wants, total, per_run)
    assert shares.keys() == wants.keys()
    for run, share in shares.items():
        assert 1 <= share <= min(per_run, max(wants[run], 1))
    assert sum(shares.values()) <= max(total, len(wants))
    # a run short of what it wants (within its capacity) means the cap is used up, and no run
    # holds more than one above it: the cap is shared out, not left idle nor given unevenly
    short = [r for r in wants if shares[r] < min(per_run, max(wants[r], 1))]
    if short and len(wants) <= total:
        assert sum(shares.values()) == total
        assert max(shares.values()) <= min(shares[r] for r in short) + 1


async def test_a_run_submitted_behind_a_busy_one_gets_its_share_at_once(bus: Bus) -> None:
    """4 coders, 4 tasks in flight across runs. Each run alone may have 8: without the cap the
    busy run would queue 8 items, and the late run's would wait behind the 4 queued."""
    runs = ("fair-busy", "fair-late")
    started: list[tuple[str, str]] = []
    release: dict[tuple[str, str], asyncio.Event] = {}

    async def coder(item: WorkItem) -> Result:
        if item.run_id in runs:  # (the session's server may hold other tests' work)
            started.append((item.run_id, item.task_id))
            await release.setdefault((item.run_id, item.task_id), asyncio.Event()).wait()
        return CodeResult(patch=Patch(text=""), summary="done")

    async def approve(item: WorkItem) -> Result:
        return (
            TestResult(passed=True)
            if isinstance(item, TestRequest)
            else ReviewResult(approved=True)
        )

    def let_go(count: int) -> None:
        """Let the first `count` held tasks finish."""
        held = [key for key in started if not release.setdefault(key, asyncio.Event()).is_set()]
        for key in held[:count]:
            release[key].set()

    handlers = {"coder": coder, "tester": approve, "review": approve}
    coordinator = Coordinator(bus, name="fair", capacity=8, max_in_flight=4)
    async with running_coordinator(coordinator), workers_of(bus, handlers, concurrency=4):
        await submit(bus, [TaskSpec(id=f"b{i}", title="b") for i in range(10)], runs[0])
        await until(lambda: len(started) == 4)
        await submit(bus, [TaskSpec(id=f"l{i}", title="l") for i in range(3)], runs[1])
        # its share (2 of 4) goes out at once; the coders are all held by the busy run
        for task_id in ("l0", "l1"):
            await wait_for_task(bus, runs[1], task_id, TaskState.CODING)
        let_go(2)  # the busy run then has 2 in flight: its share, so it starts no more
        await until(lambda: len(started) == 6)
        assert [run for run, _ in started[4:]] == [runs[1], runs[1]]
        while {(await status(bus, run)).state for run in runs} != {RunState.DONE}:
            let_go(len(started))
            await asyncio.sleep(0.05)
    assert sorted(started) == sorted(
        [(runs[0], f"b{i}") for i in range(10)] + [(runs[1], f"l{i}") for i in range(3)]
    )
