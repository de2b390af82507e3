"""nats-server restarted mid-run (same port, same file store): nothing is lost, nothing redone;
and a coordinator or a worker stopped while nats-server is down stops at once, and cleanly."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.presence import listen_for_workers
from codeyard.schemas import RunStatus, StatusQuery
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, child_env, processes, submit
from tests.faults.harness import assert_recovered, fault, plan, wait_mid_run, worker_options
from tests.processes import stop

# Waiting on NATS took 5 s (a request's timeout) before the stop; the stop itself takes ~0.2 s.
STOPS_WITHIN = 2.5  # seconds


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


async def test_a_coordinator_stopped_while_nats_server_is_down_exits_cleanly_at_once(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")  # this test's own: the session's must stay up
    stderr = tmp_path / "coordinator.log"
    env = child_env(server.url) | {"CODEYARD_DATA_DIR": str(tmp_path / "data")}
    async with server:
        with stderr.open("wb") as log:
            coordinator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "codeyard", "coordinator", env=env, stderr=log
            )
        try:
            bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
            try:
                reply = await ask(bus, "status", StatusQuery(), timeout=60)
            finally:
                await bus.close()
            assert isinstance(reply, RunStatus)  # only a leader answers: it holds the lease
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1)  # it notices the server is gone
            stopping = time.monotonic()
        finally:
            await stop(coordinator)  # SIGTERM
        took = time.monotonic() - stopping

    logged = stderr.read_text()
    assert coordinator.returncode == 0, logged
    assert took < STOPS_WITHIN, f"took {took:.1f} s to stop: {logged[-2000:]}"
    assert "could not release the coordinator lease" in logged
    assert "cannot reach NATS" not in logged


async def test_a_worker_stopped_while_nats_server_is_down_exits_cleanly_at_once(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    stderr = tmp_path / "worker.log"
    env = child_env(server.url) | {"CODEYARD_DATA_DIR": str(tmp_path / "data")}
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        try:
            await bus.setup()
            with stderr.open("wb") as log:
                worker = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "codeyard", "worker", "review", "--name", "static"),
                    env=env,
                    stderr=log,
                )
            try:
                for _ in range(30):  # it serves once it announces itself
                    heard = await listen_for_workers(bus, window=1.0)
                    if any(presence.role == "review.static" for presence in heard):
                        break
                else:
                    raise AssertionError(f"the worker never announced itself: {stderr.read_text()}")
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(1)  # it notices the server is gone
                stopping = time.monotonic()
            finally:
                await stop(worker)  # SIGTERM
            took = time.monotonic() - stopping
        finally:
            await bus.close()

    logged = stderr.read_text()
    assert worker.returncode == 0, logged
    assert took < STOPS_WITHIN, f"took {took:.1f} s to stop: {logged[-2000:]}"
