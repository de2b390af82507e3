"""The supervisor keeps children running and stops them all on request."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import resource
import signal
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest

from codeyard.bus.worker import STOP_GRACE
from codeyard.cancellation import wait_event
from codeyard.supervisor import STOP_TIMEOUT, ChildSpec, Supervisor


async def test_a_crashing_child_is_restarted_and_stop_ends_every_child(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    crashing = ChildSpec(
        "crasher",
        [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"],
    )
    steady = ChildSpec("steady", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([crashing, steady], backoff=0.05, max_backoff=0.1, stop_timeout=5)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    for _ in range(200):
        if starts.exists() and len(starts.read_text()) >= 3:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 10)

    crasher, sleeper = supervisor.children["crasher"], supervisor.children["steady"]
    assert crasher.starts >= 3
    assert set(crasher.exits[:2]) == {3}
    assert sleeper.starts == 1  # never restarted: it never exited on its own
    assert sleeper.process is not None
    assert sleeper.process.returncode is not None  # stopped by the supervisor


async def test_a_child_with_bad_configuration_stops_every_child(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 is how codeyard's services say their configuration is wrong (a dashboard
    token too short, a port in use, no sandbox): starting them again would fail the same way,
    for ever. The others used to run on without it, and `up` with them."""
    says = "import sys; sys.stderr.write('starting\\n\\nerror: bad setting\\n'); sys.exit(2)"
    misconfigured = ChildSpec("dashboard", [sys.executable, "-c", says])
    steady = ChildSpec("steady", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([misconfigured, steady], backoff=0.05, stop_timeout=5)
    stop = asyncio.Event()

    await asyncio.wait_for(supervisor.run(stop), 20)  # by itself: nobody set `stop`

    dashboard, sleeper = supervisor.children["dashboard"], supervisor.children["steady"]
    assert supervisor.refused is dashboard
    assert dashboard.gave_up
    assert (dashboard.starts, dashboard.exits) == (1, [2])
    assert list(dashboard.last_lines) == ["starting", "error: bad setting"]
    assert sleeper.starts == 1
    assert sleeper.exits == [-signal.SIGTERM]  # stopped by the supervisor, the usual way
    assert "dashboard exited with 2 (bad configuration" in caplog.text
    assert "error: bad setting" in capfd.readouterr().err  # passed on as it came


async def test_a_child_refused_only_on_a_restart_is_restarted_and_stops_nobody(
    tmp_path: Path,
) -> None:
    """A restart that meets a passing trouble (the dashboard's port taken a moment) exited 2,
    and the whole stack stopped with it, runs in flight included."""
    starts = tmp_path / "starts"
    # crashes, then is refused once (its port taken), then runs
    says = (
        f"import pathlib, sys, time; p = pathlib.Path({str(starts)!r}); n = len(p.read_text()) "
        "if p.exists() else 0; p.write_text('x' * (n + 1)); "
        "sys.exit(3) if n == 0 else sys.exit(2) if n == 1 else time.sleep(600)"
    )
    flaky = ChildSpec("dashboard", [sys.executable, "-c", says])
    steady = ChildSpec("steady", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([flaky, steady], backoff=0.05, max_backoff=0.1, stop_timeout=5)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    async with asyncio.timeout(20):
        while supervisor.children["dashboard"].starts < 3:  # noqa: ASYNC110 - no signal
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert not running.done()
    stop.set()
    await asyncio.wait_for(running, 10)

    dashboard, sleeper = supervisor.children["dashboard"], supervisor.children["steady"]
    assert supervisor.refused is None
    assert dashboard.exits == [3, 2, -signal.SIGTERM]
    assert sleeper.exits == [-signal.SIGTERM]  # ran on, stopped only by `stop`


async def test_a_child_that_cannot_be_started_is_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starting it raised (no file descriptor left for its pipe, say): its keeper ended,
    silently, and the role was gone for good while `up` ran on."""
    planner = ChildSpec("planner", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([planner], backoff=0.05, max_backoff=0.1, stop_timeout=5)
    stop = asyncio.Event()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # No new descriptor: a new one must be below 3, where stdin, stdout and stderr are (those
    # open stay usable), so the child's stderr pipe cannot be made, whatever else closes one.
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    try:
        running = asyncio.create_task(supervisor.run(stop))
        async with asyncio.timeout(20):
            while caplog.text.count("planner could not be started") < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    async with asyncio.timeout(20):
        while supervisor.children["planner"].starts < 1:  # noqa: ASYNC110 - no signal
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 10)

    assert "Too many open files" in caplog.text
    assert supervisor.children["planner"].exits == [-signal.SIGTERM]


async def test_a_child_whose_own_child_keeps_its_stderr_is_restarted_all_the_same(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The supervisor reads every child's stderr; a process the child started inherits it and
    may hold it open long after the child exited. That child is still seen to exit."""
    pids = tmp_path / "pids"
    leaves_a_sleeper = (
        "import subprocess, sys; sleeper = subprocess.Popen(['sleep', '600']); "
        f"open({str(pids)!r}, 'a').write(f'{{sleeper.pid}}\\n'); "
        "print('bye', file=sys.stderr); raise SystemExit(3)"
    )
    child = ChildSpec("leaver", [sys.executable, "-c", leaves_a_sleeper])
    supervisor = Supervisor([child], backoff=0.05, max_backoff=0.1, stop_timeout=5)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    leaver = supervisor.children["leaver"]
    try:
        for _ in range(400):
            if leaver.starts >= 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, 20)
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    assert leaver.starts >= 2
    assert leaver.exits[0] == 3
    assert capfd.readouterr().err.count("bye") >= 1


async def test_a_child_started_as_stop_comes_is_stopped_too(tmp_path: Path) -> None:
    """A signal that lands while a keeper is starting a child (here: right after the process
    exists, before the keeper gets it back) must stop that child too; it used to outlive the
    supervisor, unseen by the pass that stops every child."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)  # as `up` does with SIGINT and SIGTERM
    spawn = asyncio.create_subprocess_exec
    started: list[asyncio.subprocess.Process] = []

    async def signalled_while_starting(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await spawn(*args, **kwargs)
        started.append(process)
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_event(stop, 10)  # the loop runs the handler while this start is not done
        return process

    child = ChildSpec("long", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([child], stop_timeout=10)
    try:
        with patch.object(asyncio, "create_subprocess_exec", signalled_while_starting):
            await asyncio.wait_for(supervisor.run(stop), 30)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        for process in started:
            if process.returncode is None:
                process.kill()
                await process.wait()
                pytest.fail(f"pid {process.pid} outlived the supervisor")
    assert stop.is_set()
    [process] = started
    assert process.returncode is not None


# A supervisor whose child writes 1 MiB to stderr, then waits; SIGTERM stops it.
CHATTY_UNDER_SUPERVISION = """
import asyncio, signal, sys
from codeyard.supervisor import ChildSpec, Supervisor

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    chatty = "import sys, time; sys.stderr.write('x' * (1 << 20)); sys.stderr.flush(); " \\
        "print('written', flush=True); time.sleep(600)"
    child = ChildSpec("chatty", [sys.executable, "-c", chatty])
    await Supervisor([child], stop_timeout=2).run(stop)
    print("stopped", flush=True)

asyncio.run(main())
"""


async def test_a_stderr_nobody_reads_does_not_keep_the_supervisor_from_stopping() -> None:
    """Its stderr stalled (a terminal on Ctrl-S, a pager, a log collector not reading): the
    children's output is passed on from a thread of its own, so the supervisor still hears
    SIGTERM and stops every child; what cannot wait is dropped rather than block the child."""
    unread, stderr = os.pipe()  # never read here
    try:
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHATTY_UNDER_SUPERVISION,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        os.close(stderr)
        assert supervisor.stdout is not None
        try:
            line = await asyncio.wait_for(supervisor.stdout.readline(), 30)
            assert line == b"written\n"  # the child was not blocked on its full pipe
            supervisor.send_signal(signal.SIGTERM)
            out = await asyncio.wait_for(supervisor.stdout.read(), 20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)  # its child too, were it stuck
            await supervisor.wait()
    finally:
        os.close(unread)
    assert out == b"stopped\n"
    assert supervisor.returncode == 0


def test_stopping_outwaits_a_workers_hand_back() -> None:
    """A worker given SIGTERM finishes its in-flight work for up to its grace, then hands the
    rest back (nak: redelivered at once) and closes its connection. `codeyard up` killed its
    children after exactly that grace (30 s), in the middle of the hand-back."""
    assert STOP_GRACE + 5 <= STOP_TIMEOUT
    assert inspect.signature(Supervisor).parameters["stop_timeout"].default == STOP_TIMEOUT


# On SIGTERM: whether the gate's process (its pid in a file) still runs, written down.
ASKS_THE_GATE_WHILE_STOPPING = """
import os, pathlib, signal, sys, time
gate_pid, said = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def finish(*_):
    time.sleep(1.0)  # finishing its work in flight, which asks the gate
    try:  # (a zombie is gone too: it is dead, whoever reaps it)
        state = pathlib.Path(f"/proc/{gate_pid.read_text()}/stat").read_text().rsplit(")")[1]
        said.write_text("gate gone" if state.split()[0] == "Z" else "gate running")
    except FileNotFoundError:
        said.write_text("gate gone")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
time.sleep(600)
"""


async def test_the_gate_stops_only_once_the_workers_have_finished(tmp_path: Path) -> None:
    """Stopped together, a tester finishing its work found no gate to ask: its work was handed
    back rather than finished."""
    gate_pid, said = tmp_path / "gate.pid", tmp_path / "said"
    records_pid = (
        f"import os, pathlib, time; pathlib.Path({str(gate_pid)!r}).write_text(str(os.getpid()));"
        " time.sleep(600)"
    )
    gate = ChildSpec("safety-gate", [sys.executable, "-c", records_pid], stops_last=True)
    worker = ChildSpec(
        "tester", [sys.executable, "-c", ASKS_THE_GATE_WHILE_STOPPING, str(gate_pid), str(said)]
    )
    supervisor = Supervisor([gate, worker], stop_timeout=10)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    async with asyncio.timeout(20):
        while not gate_pid.exists() or supervisor.children["tester"].process is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the worker's handler is set
    stop.set()
    await asyncio.wait_for(running, 30)

    assert said.read_text() == "gate running"
    assert supervisor.children["safety-gate"].exits == [-signal.SIGTERM]


async def test_a_hurried_stop_kills_a_child_still_stopping(tmp_path: Path) -> None:
    """Stopping waits for children to finish their work (up to `stop_timeout`); once `hurry`
    is set it waits no more, and kills those still running."""
    deaf = tmp_path / "deaf"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(deaf)!r}, 'w').close(); time.sleep(600)"
    )
    quick = ChildSpec("quick", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([ChildSpec("deaf", [sys.executable, "-c", code]), quick])
    assert supervisor._stop_timeout == STOP_TIMEOUT  # 40 s, were it not hurried
    stop, hurry = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop, hurry))
    while not deaf.exists():  # noqa: ASYNC110 - a file from another process
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.sleep(0.5)
    assert not running.done()  # waiting for the child deaf to SIGTERM
    hurry.set()
    await asyncio.wait_for(running, 20)

    assert supervisor.children["deaf"].exits == [-signal.SIGKILL]
    assert supervisor.children["quick"].exits == [-signal.SIGTERM]  # stopped the usual way


# A service whose event loop beats (`codeyard.liveness`), then blocks for good (a call that never
# returns), as a real one would run under `up`.
STUCK_SERVICE = """
import asyncio, sys, time
from codeyard.config import Settings
from codeyard.service_runtime import run_service

async def main():
    await asyncio.sleep(1)
    open(sys.argv[1], "a").write("x")
    time.sleep(600)  # the loop turns no more

run_service(main(), "asyncio", Settings().heartbeat_file)  # as `codeyard.cli` does
"""


async def test_a_child_whose_event_loop_is_stuck_is_killed_and_started_again(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    starts = tmp_path / "starts"
    stuck = ChildSpec("coordinator", [sys.executable, "-c", STUCK_SERVICE, str(starts)])
    # never beats (not run by codeyard.service_runtime): never judged
    quiet = ChildSpec("quiet", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor = Supervisor([stuck, quiet], backoff=0.05, stop_timeout=5, hung_after=3)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    try:
        async with asyncio.timeout(60):
            while not starts.exists() or len(starts.read_text()) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)

    coordinator = supervisor.children["coordinator"]
    assert coordinator.hung >= 1
    assert coordinator.exits[0] == -signal.SIGKILL
    assert coordinator.starts >= 2
    assert supervisor.children["quiet"].exits == [-signal.SIGTERM]  # only stopped at the end
    assert "coordinator (pid " in caplog.text
    assert re.search(r"has shown no sign of life for \d+ s: its event loop is stuck", caplog.text)
    # its stacks, from SIGUSR1 (passed on from its stderr), show where it stuck
    line = STUCK_SERVICE.splitlines().index("    time.sleep(600)  # the loop turns no more") + 1
    assert f'File "<string>", line {line} in main' in capfd.readouterr().err
