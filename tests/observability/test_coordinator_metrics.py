"""The leading coordinator's gauges (tasks and runs by state, consumer queues) and counters
(results, dispatches, steps), with an in-process coordinator on the real bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from codeyard.bus import Bus
from codeyard.bus.subjects import result_subject
from codeyard.coordinator.service import Coordinator
from codeyard.coordinator.work_items import submission_trace
from codeyard.schemas import CodeResult, Patch, TaskSpec
from tests.coordinator.harness import running_coordinator, status, submit
from tests.observability.samples import Delta, value


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(bus, name="coord-metrics", capacity=4, metrics_interval=0.1)
    async with running_coordinator(coordinator):
        yield coordinator


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"never true: {what}"
        await asyncio.sleep(0.05)


def tasks(state: str) -> float:
    return value("codeyard_coordinator_tasks", state=state)


def queue(gauge: str, stream: str, consumer: str) -> float | None:
    return REGISTRY.get_sample_value(gauge, {"stream": stream, "consumer": consumer})


async def test_tasks_by_state_queues_results_and_dispatches(
    bus: Bus, coordinator: Coordinator
) -> None:
    delta = Delta(
        ("codeyard_coordinator_dispatches_total", {"role": "coder"}),
        ("codeyard_coordinator_dispatches_total", {"role": "tester"}),
        ("codeyard_coordinator_results_total", {"outcome": "applied"}),
        ("codeyard_coordinator_results_total", {"outcome": "ignored"}),
        ("codeyard_coordinator_step_duration_seconds_count", {}),
    )
    plan = [TaskSpec(id="a", title="models"), TaskSpec(id="b", title="api", deps=["a"])]
    run_id = await submit(bus, plan, run_id="run-metrics")
    await eventually(lambda: tasks("coding") == 1 and tasks("planned") == 1, "a coding, b planned")
    assert value("codeyard_coordinator_open_runs", state="executing") == 1
    assert value("codeyard_coordinator_leading") == 1
    # Nobody serves the coder: its work item waits in CY_WORK.
    pending = "codeyard_consumer_pending_messages"
    await eventually(lambda: queue(pending, "CY_WORK", "coder") == 1, "one item for the coder")
    assert queue(pending, "CY_WORK", "tester") == 0
    assert queue(pending, "CY_RESULTS", "coordinator") is not None
    assert queue("codeyard_consumer_ack_pending_messages", "CY_WORK", "coder") == 0
    assert queue("codeyard_consumer_redelivered_messages", "CY_WORK", "coder") == 0

    # The coder's answer, as a worker would send it; and one for a run nobody knows.
    trace = submission_trace(await status(bus, run_id))  # what its work item carries
    answer = CodeResult(
        run_id=run_id, task_id="a", attempt=1, trace_id=trace, patch=Patch(text="diff")
    )
    await bus.publish(result_subject("coder"), answer)
    stray = CodeResult(run_id="no-such-run", task_id="a", attempt=1, patch=Patch(text="diff"))
    await bus.publish(result_subject("coder"), stray)
    await eventually(lambda: tasks("testing") == 1, "a testing")

    assert delta("codeyard_coordinator_dispatches_total", role="coder") == 1
    assert delta("codeyard_coordinator_dispatches_total", role="tester") == 1
    assert delta("codeyard_coordinator_results_total", outcome="applied") == 1
    await eventually(
        lambda: delta("codeyard_coordinator_results_total", outcome="ignored") == 1, "stray"
    )
    assert delta("codeyard_coordinator_step_duration_seconds_count") >= 2


async def test_a_refused_result_counts_once_as_refused(bus: Bus, coordinator: Coordinator) -> None:
    """The answer the coordinator makes for a refused result (failing that work) was counted
    too: the outcomes added up to more results than came."""
    outcomes = ("refused", "applied", "ignored", "early")
    delta = Delta(*(("codeyard_coordinator_results_total", {"outcome": o}) for o in outcomes))
    run_id = await submit(bus, [TaskSpec(id="a", title="models")], run_id="run-refused")
    await eventually(lambda: tasks("coding") >= 1, "a coding")
    trace = submission_trace(await status(bus, run_id))
    # a coder's answer on the tester's subject: not the tester's to give
    forged = CodeResult(
        run_id=run_id, task_id="a", attempt=1, trace_id=trace, patch=Patch(text="x")
    )
    await bus.publish(result_subject("tester"), forged)
    await eventually(
        lambda: delta("codeyard_coordinator_results_total", outcome="refused") == 1, "refused"
    )
    await asyncio.sleep(0.5)  # (a second count would come in the same step)
    for outcome in ("applied", "ignored", "early"):
        assert delta("codeyard_coordinator_results_total", outcome=outcome) == 0, outcome
