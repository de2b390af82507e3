"""A nats-server that takes messages smaller than the default 1 MiB (`max_payload`): a run's
records and its status are cut to that size, as they are to the default one."""

from __future__ import annotations

from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.coordinator.service import Coordinator
from codeyard.follow import run_status
from codeyard.schemas import ControlError, RunStatus, SubmitRun, TaskSpec
from codeyard.schemas.model import RunState
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, running_coordinator

MAX_PAYLOAD = 128 * 1024


async def test_a_run_whose_first_step_is_bigger_than_a_message_is_stored_in_parts(
    tmp_path: Path,
) -> None:
    """The journal entry of its first step (every task's record) was about 200 KB, cut at
    512 KiB: the server refused it, and the step failed at every try of the submission."""
    config = tmp_path / "nats.conf"
    config.write_text(
        f'max_payload: {MAX_PAYLOAD}\njetstream {{ store_dir: "{tmp_path / "jetstream"}" }}\n'
    )
    plan = [TaskSpec(id=f"t{index}", title="x") for index in range(1_200)]
    async with EmbeddedNats(tmp_path, config_file=config) as server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        try:
            await bus.setup()
            assert bus.nc.max_payload == MAX_PAYLOAD
            async with running_coordinator(Coordinator(bus, name="c1", capacity=4)):
                submission = SubmitRun(run_id="r1", goal="g", plan=plan, approve_plan=True)
                accepted = await ask(bus, "submit", submission, timeout=20)
                assert not isinstance(accepted, ControlError), accepted
                status = await run_status(bus, "r1")
        finally:
            await bus.close()

    assert isinstance(status, RunStatus)
    [run] = status.runs
    assert run.state is RunState.PLAN_APPROVAL
    assert len(run.tasks) == len(plan)
