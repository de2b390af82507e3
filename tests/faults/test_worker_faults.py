"""Workers that die or freeze mid-run: their work goes to another worker and is applied once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.schemas import RunState, TaskSpec
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    processes,
    status,
    submit,
)
from tests.faults.harness import (
    MERGED_BEFORE_FAULT,
    assert_recovered,
    fault,
    merged_now,
    plan,
    wait_mid_run,
    worker_options,
)


def ancestors(specs: Sequence[TaskSpec], task_id: str) -> set[str]:
    deps = {spec.id: spec.deps for spec in specs}
    found: set[str] = set()
    todo = list(deps[task_id])
    while todo:
        dep = todo.pop()
        if dep not in found:
            found.add(dep)
            todo.extend(deps[dep])
    return found


def mid_run_task(specs: Sequence[TaskSpec]) -> str:
    """A task that becomes ready only once about MERGED_BEFORE_FAULT others are merged."""
    return min(
        (spec.id for spec in specs),
        key=lambda task_id: abs(len(ancestors(specs, task_id)) - MERGED_BEFORE_FAULT),
    )


async def test_a_coder_killed_mid_run_has_its_work_finished_by_another(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    specs = plan(seed=21)
    held = mid_run_task(specs)
    log = tmp_path / "work.log"
    with fault("SIGKILL a coder worker") as recovery:
        async with processes(nats_server.url) as children:
            await children.coordinator("coord-a")
            await children.worker(*worker_options(log, "--roles", "tester,review"))
            # The victim is the only coder until it holds `held`, which it never answers, so
            # the kill is sure to catch work in its hands (and `held`'s dependents wait for it).
            victim = await children.worker(
                *worker_options(log, "--roles", "coder", "--hang-on", held)
            )
            run_id = await submit(bus, specs)
            assert victim.stdout is not None
            line = await asyncio.wait_for(victim.stdout.readline(), 120)
            assert line == f"HANGING {held}\n".encode()
            await children.worker(*worker_options(log, "--roles", "coder"))

            recovery.inject(await merged_now(bus, run_id))
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            run = await recovery.wait(bus, run_id)

        await assert_recovered(bus, run_id, run, specs)
        assert not recovery.finished_twice(log)
        # the held task was coded by the surviving coder, from the redelivered work item
        coding = ("CodeRequest", held)
        coders = [pid for kind, task, _, pid in completions(log) if (kind, task) == coding]
        assert coders
        assert str(victim.pid) not in coders


def completions(log: Path) -> list[tuple[str, str, str, str]]:
    """(message type, task, attempt, worker pid) of each finished work item."""
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


async def test_a_worker_frozen_past_ack_wait_is_replaced_and_its_late_answers_apply_once(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    specs = plan(seed=22)
    log = tmp_path / "work.log"
    with fault("SIGSTOP a worker past ack_wait") as recovery:
        async with processes(nats_server.url) as children:
            await children.coordinator("coord-a")
            # slower workers than elsewhere, so the run is still executing when it wakes up
            options = worker_options(log, "--roles", "coder,tester,review", delay=0.3)
            frozen = await children.worker(*options)
            other = await children.worker(*options)
            run_id = await submit(bus, specs)

            recovery.inject(await wait_mid_run(bus, run_id))
            frozen.send_signal(signal.SIGSTOP)
            recovered = recovery.watch(bus, run_id)
            # no heartbeat from a stopped process: its work is redelivered after ack_wait
            await asyncio.sleep(2.5 * TEST_TOPOLOGY.ack_wait)
            assert (await status(bus, run_id)).state is RunState.EXECUTING
            frozen.send_signal(signal.SIGCONT)  # it wakes up and answers what it held
            run = await recovered

        # The effect is applied once: one merge per task at attempt 1, nothing unacked. The late
        # answers carry the same result id as the replacements', so JetStream stores one of
        # each, and the engine would ignore a second anyway.
        await assert_recovered(bus, run_id, run, specs)

        # The work log shows the redelivery: items the frozen worker held were finished by the
        # other worker too, and those are the only items finished more than once. (A copy
        # redelivered while it was stopped may have gone to the frozen worker's own pending pull
        # request, which it then also finished on waking up: at least once, applied once.)
        twice = recovery.finished_twice(log)
        assert twice, "nothing the frozen worker held was redelivered"
        finishers: dict[tuple[str, str, str], list[str]] = {}
        for kind, task, attempt, pid in completions(log):
            finishers.setdefault((kind, task, attempt), []).append(pid)
        for item in twice:
            assert set(finishers[item]) == {str(frozen.pid), str(other.pid)}, item
