"""A nats-server that takes messages smaller than the default 1 MiB (`max_payload`): a run's
records and its status are cut to that size, as they are to the default one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.coordinator.service import Coordinator
from codeyard.follow import run_status
from codeyard.schemas import (
    Accepted,
    CancelRun,
    ControlError,
    RunStatus,
    SubmitRun,
    TaskSpec,
)
from codeyard.schemas.model import RunState, TaskState
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, run_events, running_coordinator, tasks_moved_to

MAX_PAYLOAD = 128 * 1024


@asynccontextmanager
async def bus_of_a_server_taking(max_payload: int, tmp_path: Path) -> AsyncIterator[Bus]:
    """A bus, set up, on a nats-server of its own taking messages of `max_payload` bytes."""
    config = tmp_path / "nats.conf"
    config.write_text(
        f'max_payload: {max_payload}\njetstream {{ store_dir: "{tmp_path / "jetstream"}" }}\n'
    )
    async with EmbeddedNats(tmp_path, config_file=config) as server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        try:
            await bus.setup()
            assert bus.nc.max_payload == max_payload
            yield bus
        finally:
            await bus.close()


async def test_a_run_whose_first_step_is_bigger_than_a_message_is_stored_in_parts(
    tmp_path: Path,
) -> None:
    """The journal entry of its first step (every task's record) was about 200 KB, cut at
    512 KiB: the server refused it, and the step failed at every try of the submission."""
    plan = [TaskSpec(id=f"t{index}", title="x") for index in range(1_200)]
    async with (
        bus_of_a_server_taking(MAX_PAYLOAD, tmp_path) as bus,
        running_coordinator(Coordinator(bus, name="c1", capacity=4)),
    ):
        submission = SubmitRun(run_id="r1", goal="g", plan=plan, approve_plan=True)
        accepted = await ask(bus, "submit", submission, timeout=20)
        assert not isinstance(accepted, ControlError), accepted
        status = await run_status(bus, "r1")

    assert isinstance(status, RunStatus)
    [run] = status.runs
    assert run.state is RunState.PLAN_APPROVAL
    assert len(run.tasks) == len(plan)


async def test_cancelling_a_run_tells_its_tasks_in_events_the_server_takes(
    tmp_path: Path,
) -> None:
    """Its task transitions were told in events of up to 64 KiB whatever the server took: on
    a 48 KiB server the step failed, and failed again at each try of the cancel."""
    plan = [TaskSpec(id=f"t{index}", title="x") for index in range(400)]
    async with (
        bus_of_a_server_taking(48 * 1024, tmp_path) as bus,
        running_coordinator(Coordinator(bus, name="c1", capacity=4)),
    ):
        await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan), timeout=20)
        cancel = CancelRun(run_id="r1", reason="enough " * 28)
        reply = await ask(bus, "cancel", cancel, timeout=20)
        events = await run_events(bus, "r1")

    assert isinstance(reply, Accepted), reply
    assert tasks_moved_to(TaskState.CANCELLED, events) == {task.id for task in plan}
