"""The active coordinator killed mid-run: the standby takes the lease and finishes the run."""

from __future__ import annotations

import signal
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from tests.coordinator.harness import leader_name, processes, submit
from tests.faults.harness import assert_recovered, fault, plan, wait_mid_run, worker_options


async def test_killing_the_active_coordinator_hands_the_run_to_the_standby(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    specs = plan(seed=23)
    log = tmp_path / "work.log"
    with fault("SIGKILL the active coordinator") as recovery:
        async with processes(nats_server.url) as children:
            coordinators = {
                name: await children.coordinator(name) for name in ("coord-a", "coord-b")
            }
            for _ in range(2):
                await children.worker(*worker_options(log))
            run_id = await submit(bus, specs)

            recovery.inject(await wait_mid_run(bus, run_id))
            leader = await leader_name(bus)
            coordinators[leader].send_signal(signal.SIGKILL)
            await coordinators[leader].wait()
            run = await recovery.wait(bus, run_id)
            successor = await leader_name(bus)

        assert successor != leader
        # The standby resumed from the stored run: it re-sent outstanding work under the same
        # ids (stored once), so every task still merged once at attempt 1 and nothing ran twice.
        await assert_recovered(bus, run_id, run, specs)
        assert not recovery.finished_twice(log)
