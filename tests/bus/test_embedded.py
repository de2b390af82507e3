"""The embedded nats-server: starts on loopback, stops cleanly, and keeps its store on restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from codeyard.bus import Bus, EmbeddedNats, PullWorker
from codeyard.bus.embedded import EmbeddedServerError
from codeyard.bus.subjects import WORK_STREAM, work_subject
from codeyard.schemas import CodeResult, Patch, Result, WorkItem, encode
from tests.bus.results import collect_results
from tests.bus.test_worker import code_request
from tests.conftest import TEST_TOPOLOGY


def test_starts_on_loopback_and_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    with server:
        assert server.running()
        assert server.url.startswith("nats://127.0.0.1:")
    assert not server.running()
    assert "Server is ready" in (tmp_path / "nats-server.log").read_text()


def test_a_ctrl_c_in_the_terminal_does_not_reach_the_server(tmp_path: Path) -> None:
    """It runs in a session (and so a process group) of its own: the terminal's SIGINT goes to
    its foreground group only, and whoever started the server stops it, after its clients."""
    with EmbeddedNats(tmp_path) as server:
        assert server.pid is not None
        assert os.getsid(server.pid) == server.pid != os.getsid(0)
        assert os.getpgid(server.pid) != os.getpgid(0)


def server_environment(server: EmbeddedNats) -> dict[str, str]:
    assert server.pid is not None
    raw = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if entry)


def test_the_server_gets_a_quarter_of_the_cores_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    with EmbeddedNats(tmp_path / "default") as server:
        threads = server_environment(server)["GOMAXPROCS"]
    assert threads == str(max(1, len(os.sched_getaffinity(0)) // 4))

    monkeypatch.setenv("GOMAXPROCS", "3")  # the operator's choice wins
    with EmbeddedNats(tmp_path / "told") as server:
        assert server_environment(server)["GOMAXPROCS"] == "3"


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    second = EmbeddedNats(tmp_path, port=nats_server.port)
    try:
        with pytest.raises(EmbeddedServerError, match="exited"):
            second.start()
    finally:
        second.stop()  # should this test fail, the server it started does not outlive it


async def test_restart_keeps_queued_work_and_workers_reconnect(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        await bus.setup()

        async def handle(item: WorkItem) -> Result:
            return CodeResult(patch=Patch(text=item.task_id))

        stop = asyncio.Event()
        worker = asyncio.create_task(PullWorker(bus, "coder", handle).run(stop))
        await bus.publish(work_subject("coder"), code_request("before"))
        [first] = await collect_results(bus, 1)
        # Its ack is sent once its result is stored, without a reply: stopped before the ack
        # landed, the server would rightly hand "before" out again after ack_wait (CI saw it).
        assert await work_left(bus) == 0

        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)  # same port, same store
        await bus.publish(work_subject("coder"), code_request("after"), timeout=15)
        [second] = await collect_results(bus, 1, timeout=30)
        stop.set()
        await asyncio.wait_for(worker, 10)
        assert (first.task_id, second.task_id) == ("before", "after")
        assert await work_left(bus) == 0  # acked too
        await bus.close()


async def work_left(bus: Bus) -> int:
    """The work items still in the stream once acks sent have had 5 s to land (the ack follows
    the result, and the server applies it asynchronously)."""
    for _ in range(100):
        if (left := (await bus.js.stream_info(WORK_STREAM)).state.messages) == 0:
            break
        await asyncio.sleep(0.05)
    return left


def thread_state(task: Path) -> str:
    """The state letter of a thread (/proc/PID/task/TID); "" if it is gone."""
    try:
        return (task / "stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return ""


async def stopped(pid: int) -> None:
    """SIGSTOP `pid` and return once every thread of it is stopped: until then a thread running
    on the other core may still take a message (and answer it)."""
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    for _ in range(500):
        states = {thread_state(task) for task in tasks.iterdir()} - {""}
        if states <= {"T", "t"}:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop: {states}")


async def test_a_dropped_connection_fails_waiting_publishes_at_once(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        await bus.setup()
        assert server.pid is not None
        await stopped(server.pid)  # the server takes the publish but never answers
        try:
            sent = await bus.pipeline.publish(work_subject("coder"), encode(code_request("t")))
            waiting = asyncio.create_task(bus.pipeline.wait([sent], timeout=60))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        finally:
            server.kill()  # the connection drops: no ack can come any more
        [outcome] = await asyncio.wait_for(waiting, 10)  # not the 60 s timeout
        assert isinstance(outcome, ConnectionError)
        await bus.nc.close()


async def test_a_server_that_stops_answering_is_noticed_and_reconnected_to(tmp_path: Path) -> None:
    """SIGSTOP keeps the TCP connection open with nobody answering, as a frozen host or a cut
    network does: the bus notices after a few unanswered pings, and reconnects once it answers."""
    with EmbeddedNats(tmp_path) as server:
        assert server.pid is not None
        bus = await Bus.connect(server.url, ping_interval=0.2)
        try:
            os.kill(server.pid, signal.SIGSTOP)
            try:
                for _ in range(50):  # 4 pings unanswered: about 0.8 s
                    if not bus.connected:
                        break
                    await asyncio.sleep(0.1)
                assert not bus.connected
            finally:
                os.kill(server.pid, signal.SIGCONT)
            for _ in range(50):
                if bus.connected:
                    break
                await asyncio.sleep(0.1)
            assert bus.connected
            await bus.nc.flush(timeout=5)  # and it works again
        finally:
            await bus.close()
