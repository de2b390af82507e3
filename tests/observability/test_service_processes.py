"""Real service processes with CODEYARD_METRICS_PORT: a worker serves `/metrics` and logs JSON,
a coordinator whose port is taken warns and serves on, `codeyard up` numbers its children's
ports."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.embedded import free_port
from codeyard.bus.subjects import work_subject
from codeyard.schemas import Patch, ReviewRequest, RunStatus, StatusQuery, TaskSpec
from tests.bus.results import collect_results
from tests.coordinator.harness import ask, child_env
from tests.processes import start, stop


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


async def metrics_of(port: int, containing: str, timeout: float = 60.0) -> str:
    """The metrics page on `port` once it contains `containing`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        page = await asyncio.to_thread(scrape, port)
        if page is not None and containing in page:
            return page
        assert loop.time() < deadline, f"no {containing!r} on :{port}: {page}"
        await asyncio.sleep(0.2)


def consecutive_free_ports(count: int) -> int:
    """A port such that it and the `count - 1` after it are free right now."""
    while True:
        first = free_port()
        probes = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()


async def test_a_worker_serves_its_metrics_and_logs_json(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    port = free_port()
    env = child_env(nats_server.url) | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "CODEYARD_METRICS_PORT": str(port),
        "CODEYARD_LOG_FORMAT": "json",
    }
    stderr = tmp_path / "worker.log"
    request = ReviewRequest(
        run_id="run-p",
        task_id="t1",
        attempt=1,
        task=TaskSpec(id="t1", title="t1"),
        patch=Patch(text=""),
        reviewer="review.served",
    )
    await bus.publish(work_subject("review.served"), request)
    plugin = "tests.reviewers.sample_plugins:Approves"
    with stderr.open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "codeyard", "worker", "review", "--plugin", plugin, "--name", "served"),
            env=env,
            stderr=log,
        )
    try:
        await collect_results(bus, 1, timeout=60)
        # the counter moves after the result is out: wait for it, not only for the metric
        page = await metrics_of(port, 'codeyard_work_items_handled_total{role="review.served"} 1.0')
    finally:
        await stop(worker)
    assert 'codeyard_work_items_handled_total{role="review.served"} 1.0' in page
    assert 'codeyard_handler_duration_seconds_count{outcome="ok",role="review.served"} 1.0' in page
    records = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert records, "the worker logged nothing"
    assert {record["process"] for record in records} == {"worker-review.served"}
    assert any(f":{port}/metrics" in record["message"] for record in records)


async def test_a_coordinator_whose_metrics_port_is_taken_warns_and_serves(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    stderr = tmp_path / "coordinator.log"
    with socket.socket() as taken, stderr.open("wb") as log:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = child_env(nats_server.url) | {
            "CODEYARD_DATA_DIR": str(tmp_path / "data"),
            "CODEYARD_METRICS_PORT": str(port),
        }
        coordinator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codeyard", "coordinator", env=env, stderr=log
        )
        try:
            reply = await ask(bus, "status", StatusQuery(), timeout=60)
        finally:
            await stop(coordinator)
    assert isinstance(reply, RunStatus), stderr.read_text()
    assert coordinator.returncode == 0, stderr.read_text()
    assert f"metrics: cannot serve on 127.0.0.1:{port}" in stderr.read_text()


async def test_up_gives_each_child_its_own_metrics_port(tmp_path: Path) -> None:
    first = consecutive_free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env.pop("NATS_URL", None)
    env |= {
        "CODEYARD_DATA_DIR": str(tmp_path),
        "CODEYARD_NATS_PORT": str(free_port()),
        "CODEYARD_METRICS_PORT": str(first),
        "CODEYARD_DASHBOARD_PORT": str(free_port()),
    }
    up, line = await start("-m", "codeyard", "up", "--no-agents", env=env, ready=b"metrics on")
    try:
        assert f"coordinator :{first}, safety-gate :{first + 1}, dashboard :{first + 2}" in line
        coordinator = await metrics_of(first, "codeyard_coordinator_leading 1.0")
        gate = await metrics_of(first + 1, "codeyard_gate_decisions")
        dashboard = await metrics_of(first + 2, "python_info")  # it used to serve none
    finally:
        await stop(up)
    assert "codeyard_consumer_pending_messages" in coordinator
    assert "# TYPE codeyard_gate_decisions_total counter" in gate
    assert "process_cpu_seconds_total" in dashboard
