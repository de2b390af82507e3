"""nats-server restarted mid-run (same port, same file store): nothing is lost, nothing redone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import processes, submit
from tests.faults.harness import assert_recovered, fault, plan, wait_mid_run, worker_options


async def test_restarting_nats_server_mid_run_loses_and_repeats_nothing(tmp_path: Path) -> None:
    specs = plan(seed=24)
    log = tmp_path / "work.log"
    server = EmbeddedNats(tmp_path / "nats")  # this test's own: the session's must stay up
    with fault("restart nats-server") as recovery:
        async with server:
            bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
            try:
                await bus.setup()
                async with processes(server.url) as children:
                    await children.coordinator("coord-a")
                    for _ in range(2):
                        await children.worker(*worker_options(log))
                    run_id = await submit(bus, specs)

                    recovery.inject(await wait_mid_run(bus, run_id))
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(1)  # every client notices it is gone
                    await asyncio.to_thread(server.start)
                    run = await recovery.wait(bus, run_id)

                await assert_recovered(bus, run_id, run, specs)
            finally:
                await bus.close()
        # Work in flight across the restart may be done again: a worker that finished while the
        # server was away could neither store its result nor ack, and the coordinator re-sends
        # outstanding work when it reloads after a failed publish (JetStream's duplicate window
        # remembers only ids still stored, so a re-sent item already acked is stored anew).
        # Only the work repeats; its effect applied once, as assert_recovered showed.
        recovery.finished_twice(log)
