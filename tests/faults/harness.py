"""What every fault test shares: a 100-task run kept in flight by real processes, the checks that
it recovered, and the summary table of recoveries.

Each test submits `random_plan(100)` to a coordinator process served by scripted worker
processes, waits until part of it is merged, injects its fault, and hands the run to
`Recovery.wait`, which times how long the run took to move again and to finish. Then
`assert_recovered` checks what recovering means, whatever the fault was: the run is done, every
task merged exactly once in dependency order, and no message is left unacked on the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from codeyard.bus import Bus
from codeyard.bus.subjects import (
    BUILTIN_ROLES,
    COORDINATOR_CONSUMER,
    RESULT_STREAM,
    WORK_STREAM,
    consumer_name,
)
from codeyard.schemas import (
    DeadLetter,
    Run,
    RunEvent,
    RunState,
    RunStateChanged,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
)
from codeyard.testing.dags import random_plan
from tests.coordinator.harness import (
    assert_dependency_order,
    done_twice,
    run_events,
    status,
    wait_until,
)

PLAN_SIZE = 100
# Long enough that a 100-task run lasts several seconds (a fault lands mid-run, with work in
# every worker's hands), short enough that each test stays well under a minute.
WORKER_DELAY = 0.1
# Merged tasks before a fault is injected: the run is well under way, far from done.
MERGED_BEFORE_FAULT = 30
RUN_TIMEOUT = 180.0  # generous: CI machines are shared and noisy

TABLE_PATH = Path(__file__).resolve().parents[1] / "artifacts" / "faults.txt"


def plan(seed: int) -> list[TaskSpec]:
    return random_plan(PLAN_SIZE, seed=seed)


def worker_options(log: Path, *extra: str, delay: float = WORKER_DELAY) -> list[str]:
    """Options of a scripted worker that records what it finished in `log` and takes its time."""
    return ["--log", str(log), "--delay", str(delay), *extra]


def merged(run: Run) -> int:
    return sum(task.state is TaskState.MERGED for task in run.tasks.values())


# --- the summary table ------------------------------------------------------------------------


@dataclass
class Recovery:
    """One row of the summary: a fault, whether the system recovered from it, and how long it
    took from the injection to the next merged task and to the end of the run; and how many
    work items were finished more than once (delivery is at least once; effects apply once)."""

    fault: str
    recovered: bool = False
    next_merge: float | None = None
    run_done: float | None = None
    redone: int | None = None
    _injected_at: float = field(default=0.0, repr=False)
    _merged_at_injection: int = field(default=0, repr=False)
    _watching: asyncio.Task[Run] | None = field(default=None, repr=False)

    def inject(self, merged_so_far: int) -> None:
        """Call right before injecting the fault, with how many tasks were merged by then."""
        self._injected_at = time.monotonic()
        self._merged_at_injection = merged_so_far

    def since_injection(self) -> float:
        return time.monotonic() - self._injected_at

    def watch(self, bus: Bus, run_id: str) -> asyncio.Task[Run]:
        """`wait` in the background, for faults that last a while (the clock runs meanwhile)."""
        self._watching = asyncio.create_task(self.wait(bus, run_id))
        return self._watching

    async def wait(self, bus: Bus, run_id: str, timeout: float = RUN_TIMEOUT) -> Run:
        """Wait for the next merge after the injection, then for the end of the run; then for
        every message to be acked (`assert_nothing_unacked`), while the processes still run:
        the answer to work redone after the fault may come after the end, and a coordinator
        stopped before it acked it leaves it unacked for the next one, which is no loss."""
        target = self._merged_at_injection + 1
        await wait_until(bus, run_id, merged=target, timeout=timeout)
        self.next_merge = self.since_injection()
        run = await wait_until(bus, run_id, timeout=timeout)
        self.run_done = self.since_injection()
        await assert_nothing_unacked(bus)
        return run

    def finished_twice(self, log: Path) -> set[tuple[str, str, str]]:
        """The work items the workers' `log` shows finished more than once (and counts them)."""
        twice = set(done_twice(log))
        self.redone = len(twice)
        return twice


SUMMARY: list[Recovery] = []


@contextmanager
def fault(name: str) -> Iterator[Recovery]:
    """A row of the summary table for the test's fault: recovered only if the block (with all
    its assertions) finished without an exception."""
    row = Recovery(name)
    SUMMARY.append(row)
    try:
        yield row
    finally:
        if row._watching is not None:  # a failed test leaves no watcher polling a dead bus
            row._watching.cancel()
    row.recovered = True


def summary_table(rows: Sequence[Recovery]) -> list[str]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = ("fault", "recovered", "next merge (s)", "run done (s)", "work redone")
    lines = [
        (
            row.fault,
            "yes" if row.recovered else "NO",
            seconds(row.next_merge),
            seconds(row.run_done),
            "-" if row.redone is None else str(row.redone),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [render(header), rule, *(render(line) for line in lines)]


# --- what recovering means --------------------------------------------------------------------


def merges_per_task(events: Sequence[RunEvent]) -> Counter[str]:
    """How many distinct attempts of each task were reported merged. Events are at least once
    (a new leader may report a transition again), so repeats of one (task, attempt) count once."""
    merged_attempts = {
        (change.task_id, change.attempt)
        for event in events
        if isinstance(event, TaskStatesChanged)
        for change in event.changes
        if change.state is TaskState.MERGED
    }
    return Counter(task_id for task_id, _ in merged_attempts)


def run_states(events: Sequence[RunEvent]) -> list[RunState]:
    """The run's states as its events tell them, repeats (at least once) collapsed."""
    states: list[RunState] = []
    for event in events:
        if isinstance(event, RunStateChanged) and (not states or states[-1] is not event.state):
            states.append(event.state)
    return states


def dead_letters(events: Sequence[RunEvent]) -> list[DeadLetter]:
    return [event for event in events if isinstance(event, DeadLetter)]


async def assert_nothing_unacked(bus: Bus, timeout: float = 30.0) -> None:
    """Every role's work consumer and the coordinator's result consumer have nothing pending
    and nothing delivered but unacked. Acks travel asynchronously, so poll for a while."""
    consumers = [(WORK_STREAM, consumer_name(role)) for role in BUILTIN_ROLES]
    consumers.append((RESULT_STREAM, COORDINATOR_CONSUMER))
    deadline = time.monotonic() + timeout
    while True:
        left = {}
        for stream, consumer in consumers:
            info = await bus.js.consumer_info(stream, consumer)
            if info.num_ack_pending or info.num_pending:
                left[consumer] = (info.num_pending, info.num_ack_pending)
        if not left:
            return
        assert time.monotonic() < deadline, f"(pending, unacked) by consumer: {left}"
        await asyncio.sleep(0.2)


async def assert_recovered(
    bus: Bus, run_id: str, run: Run, specs: Sequence[TaskSpec]
) -> list[RunEvent]:
    """The run finished as if nothing had happened; returns its events for fault-specific checks.

    Every task is merged at its first attempt (a fault may delay work, never make it be redone
    as a new attempt), exactly once and after its dependencies; the events tell the run's story
    from executing to done. (That no message was left pending or unacked, `Recovery.wait`
    checked while the processes ran.)"""
    assert run.state is RunState.DONE, run.error
    assert {task.state for task in run.tasks.values()} == {TaskState.MERGED}
    assert {task.attempt for task in run.tasks.values()} == {1}
    events = await run_events(bus, run_id)
    assert_dependency_order(specs, events)
    assert merges_per_task(events) == Counter(spec.id for spec in specs)
    states = run_states(events)
    assert RunState.EXECUTING in states, states
    assert states[-1] is RunState.DONE, states
    return events


async def merged_now(bus: Bus, run_id: str) -> int:
    return merged(await status(bus, run_id))


async def wait_mid_run(bus: Bus, run_id: str) -> int:
    """Wait until part of the run is merged; returns how many tasks are. The run must still be
    executing, or the fault would land after the fact."""
    run = await wait_until(bus, run_id, merged=MERGED_BEFORE_FAULT, timeout=RUN_TIMEOUT)
    assert run.state is RunState.EXECUTING, f"the run ended before the fault: {run.state}"
    return merged(run)
