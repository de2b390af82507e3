"""nats-server restarted mid-run (same port, same file store): nothing is lost, nothing redone;
and a coordinator or a worker stopped while nats-server is down stops at once, and cleanly."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.embedded import free_port
from codeyard.bus.presence import listen_for_workers
from codeyard.deploy.nats_config import ServerOptions, write_deployment
from codeyard.schemas import RunStatus, StatusQuery
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, child_env, processes, submit, wait_until
from tests.faults.harness import (
    RUN_TIMEOUT,
    assert_nothing_unacked,
    assert_recovered,
    fault,
    plan,
    wait_mid_run,
    worker_options,
)
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


async def test_restarting_nats_server_mid_run_with_an_account_per_worker(tmp_path: Path) -> None:
    """As deployed: each worker reaches the streams through its account's imports, whose
    answers (pulls outstanding, publish acks) are routed back across accounts."""
    specs = plan(seed=25)
    log = tmp_path / "work.log"
    home = tmp_path / "nats"
    listening = ServerOptions(port=free_port(), store_dir=home / "store")
    deployment = write_deployment(home, options=listening)
    assert deployment.accounts
    server = EmbeddedNats(home, port=listening.port, config_file=deployment.config_file)
    with fault("restart nats-server, an account per worker") as recovery:
        async with server:
            ctl, services = [
                await Bus.connect(
                    server.url, credentials=deployment.credentials(user), topology=TEST_TOPOLOGY
                )
                for user in ("ctl", "coordinator")
            ]
            try:
                await services.setup()
                async with processes(server.url) as children:
                    own = deployment.credentials("coordinator").as_env()
                    await children.coordinator("coord-a", env=own)
                    for role in ("coder", "tester", "review"):
                        options = worker_options(log, "--roles", role)
                        own = deployment.credentials(role).as_env()
                        await children.worker(*options, env=own)
                    run_id = await submit(ctl, specs)

                    recovery.inject(await wait_mid_run(ctl, run_id))
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(1)
                    await asyncio.to_thread(server.start)
                    run = await wait_until(ctl, run_id, timeout=RUN_TIMEOUT)
                    await assert_nothing_unacked(services)

                await assert_recovered(ctl, run_id, run, specs)
            finally:
                await ctl.close()
                await services.close()
        recovery.finished_twice(log)


async def child(tmp_path: Path, server: EmbeddedNats, *args: str) -> asyncio.subprocess.Process:
    """`codeyard ARGS` on `server`, its log in tmp_path/child.log."""
    env = child_env(server.url) | {"CODEYARD_DATA_DIR": str(tmp_path / "data")}
    with (tmp_path / "child.log").open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codeyard", *args, env=env, stderr=log
        )


async def seconds_to_stop_during_outage(
    server: EmbeddedNats, process: asyncio.subprocess.Process
) -> float:
    """Stop nats-server, give `process` a moment to notice, then SIGTERM it: how long it took."""
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(1)
    stopping = time.monotonic()
    await stop(process)
    return time.monotonic() - stopping


async def test_a_coordinator_stopped_while_nats_server_is_down_exits_cleanly_at_once(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")  # this test's own: the session's must stay up
    async with server:
        coordinator = await child(tmp_path, server, "coordinator")
        try:
            bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
            try:
                reply = await ask(bus, "status", StatusQuery(), timeout=60)
            finally:
                await bus.close()
            assert isinstance(reply, RunStatus)  # only a leader answers: it holds the lease
            took = await seconds_to_stop_during_outage(server, coordinator)
        finally:
            await stop(coordinator)

    logged = (tmp_path / "child.log").read_text()
    assert coordinator.returncode == 0, logged
    assert took < STOPS_WITHIN, f"took {took:.1f} s to stop: {logged[-2000:]}"
    assert "could not release the coordinator lease" in logged
    assert "cannot reach NATS" not in logged


async def test_a_worker_stopped_while_nats_server_is_down_exits_cleanly_at_once(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        await bus.setup()
        worker = await child(tmp_path, server, "worker", "review", "--name", "static")
        try:
            for _ in range(30):  # it serves once it announces itself
                heard = await listen_for_workers(bus, window=1.0)
                if any(presence.role == "review.static" for presence in heard):
                    break
            else:
                raise AssertionError("the worker never announced itself")
            await bus.close()
            took = await seconds_to_stop_during_outage(server, worker)
        finally:
            await stop(worker)
            await bus.close()  # if it did not get as far

    logged = (tmp_path / "child.log").read_text()
    assert worker.returncode == 0, logged
    assert took < STOPS_WITHIN, f"took {took:.1f} s to stop: {logged[-2000:]}"
