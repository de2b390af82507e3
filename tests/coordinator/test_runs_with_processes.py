"""Whole runs with the coordinator and scripted workers as real processes, and faults injected."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgspec

from codeyard.bus import Bus, EmbeddedNats
from codeyard.schemas import FeedbackKind, RunState, TaskState
from codeyard.testing.dags import random_plan
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    assert_dependency_order,
    assert_nothing_done_twice,
    leader_name,
    processes,
    run_events,
    submit,
    wait_until,
)


async def test_200_task_dag_completes_in_dependency_order_with_feedback(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    plan = random_plan(200, seed=7)
    failing, rejected = plan[0].id, plan[1].id
    log = tmp_path / "work.log"
    async with processes(nats_server.url) as children:
        await children.coordinator("coord-a")
        for _ in range(2):
            await children.worker(
                "--roles",
                "coder,tester,review",
                "--log",
                str(log),
                "--fail-tests",
                failing,
                "--reject",
                rejected,
            )
        run_id = await submit(bus, plan)
        run = await wait_until(bus, run_id, timeout=180)

    assert run.state is RunState.DONE, run.error
    assert all(task.state is TaskState.MERGED for task in run.tasks.values())
    assert_dependency_order(plan, await run_events(bus, run_id))
    assert_nothing_done_twice(log)

    # the failed test and the rejected review went back to the coder, who fixed them next time
    assert run.tasks[failing].attempt == 2
    assert [f.kind for f in run.tasks[failing].feedback] == [FeedbackKind.TEST_FAILURE]
    assert "assert 1 == 2" in run.tasks[failing].feedback[0].text
    assert run.tasks[rejected].attempt == 2
    assert [f.kind for f in run.tasks[rejected].feedback] == [FeedbackKind.REVIEW]
    assert "handle the empty case" in run.tasks[rejected].feedback[0].text
    others = [t for t in run.tasks.values() if t.spec.id not in (failing, rejected)]
    assert {task.attempt for task in others} == {1}


async def test_killing_the_leader_mid_run_hands_the_run_to_the_standby(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    plan = random_plan(120, seed=11)
    log = tmp_path / "work.log"
    async with processes(nats_server.url) as children:
        coordinators = {
            "coord-a": await children.coordinator("coord-a"),
            "coord-b": await children.coordinator("coord-b"),
        }
        await children.worker("--log", str(log), "--delay", "0.01")
        run_id = await submit(bus, plan)
        before = await wait_until(bus, run_id, merged=30)
        assert before.state is RunState.EXECUTING  # the kill lands mid-run

        leader = await leader_name(bus)
        coordinators[leader].send_signal(signal.SIGKILL)
        await coordinators[leader].wait()
        run = await wait_until(bus, run_id, timeout=120)
        successor = await leader_name(bus)

    assert successor != leader
    assert run.state is RunState.DONE, run.error
    assert {task.attempt for task in run.tasks.values()} == {1}  # nothing re-run
    assert_dependency_order(plan, await run_events(bus, run_id))
    assert_nothing_done_twice(log)


async def test_a_worker_killed_mid_task_has_its_task_redelivered(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    plan = random_plan(30, seed=3)
    root = next(spec.id for spec in plan if not spec.deps)
    log = tmp_path / "work.log"
    async with processes(nats_server.url) as children:
        await children.coordinator("coord-a")
        victim = await children.worker("--log", str(log), "--hang-on", root)
        run_id = await submit(bus, plan)
        assert victim.stdout is not None
        line = await asyncio.wait_for(victim.stdout.readline(), 30)
        assert line == f"HANGING {root}\n".encode()
        await children.worker("--log", str(log))
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        run = await wait_until(bus, run_id, timeout=120)

    assert run.state is RunState.DONE, run.error
    assert run.tasks[root].state is TaskState.MERGED
    assert run.tasks[root].attempt == 1  # redelivered, not retried as a new attempt
    assert_nothing_done_twice(log)


async def test_restarting_nats_mid_run_loses_nothing(tmp_path: Path) -> None:
    plan = random_plan(80, seed=5)
    log = tmp_path / "work.log"
    server = EmbeddedNats(tmp_path / "nats")
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        await bus.setup()
        async with processes(server.url) as children:
            await children.coordinator("coord-a")
            await children.worker("--log", str(log), "--delay", "0.01")
            run_id = await submit(bus, plan)
            before = await wait_until(bus, run_id, merged=20)
            assert before.state is RunState.EXECUTING  # the restart lands mid-run

            await asyncio.to_thread(server.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)  # same port, same file store
            run = await wait_until(bus, run_id, timeout=120)
        await bus.close()

    assert run.state is RunState.DONE, run.error
    assert all(task.state is TaskState.MERGED for task in run.tasks.values())
    assert msgspec.json.encode(sorted(run.tasks)) == msgspec.json.encode(
        sorted(spec.id for spec in plan)
    )
