"""A result whose applying fails in a way no retry changes (a bug): its step is dropped and the
runs reloaded, as for trouble on the bus, and after `POISON_STEPS` such failures the result is
dead-lettered. It used to end the coordinator's process, and every coordinator's after it, at
each delivery of that result, so that no run went on."""

from __future__ import annotations

import asyncio
from datetime import datetime

from codeyard.bus import Bus
from codeyard.bus.subjects import DEAD_LETTER_RUN
from codeyard.coordinator.service import POISON_STEPS, Commit, Coordinator
from codeyard.schemas import DeadLetter, Result, TaskSpec, TaskState
from tests.coordinator.harness import (
    leader_name,
    run_events,
    running_coordinator,
    scripted_coder,
    status,
    submit,
    wait_for_task,
    workers_answering,
)


class BuggyCoordinator(Coordinator):
    """Fails on every result of task `poison`, as an engine bug would."""

    def _on_result(self, result: Result, commit: Commit, now: datetime) -> bool:
        if result.task_id == "poison":
            raise RuntimeError("engine bug")
        return super()._on_result(result, commit, now)


async def test_a_result_that_fails_every_step_is_dead_lettered_and_the_rest_goes_on(
    bus: Bus,
) -> None:
    plan = [TaskSpec(id="poison", title="p"), TaskSpec(id="fine", title="f")]
    coordinator = BuggyCoordinator(bus, name="coord-buggy")
    async with running_coordinator(coordinator), workers_answering(bus, scripted_coder()):
        await submit(bus, plan, run_id="r1")
        await wait_for_task(bus, "r1", "fine", TaskState.MERGED)
        letters: list[DeadLetter] = []
        for _ in range(100):
            events = await run_events(bus, DEAD_LETTER_RUN)
            letters = [event for event in events if isinstance(event, DeadLetter)]
            if letters:
                break
            await asyncio.sleep(0.2)
        run = await status(bus, "r1")
        assert await leader_name(bus) == "coord-buggy"  # still leading, and answering

    [letter] = letters
    assert letter.subject == "cy.result.coder"
    assert letter.error == f"applying it failed {POISON_STEPS} times: RuntimeError('engine bug')"
    assert run.tasks["fine"].state is TaskState.MERGED
    assert run.tasks["poison"].state is TaskState.CODING  # its answer is with a person now
