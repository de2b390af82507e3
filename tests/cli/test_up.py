"""`codeyard up` as a real process: embedded server up, topology ready, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nats.errors
import pytest

import codeyard
from codeyard.bus import Bus
from codeyard.bus.credentials import read_credentials
from codeyard.bus.embedded import find_nats_server, free_port
from codeyard.bus.gate_client import BusGateClient, GateUnavailable
from codeyard.bus.subjects import EVENT_STREAM, RESULT_STREAM, WORK_STREAM
from codeyard.llm.local import local_server_available
from codeyard.schemas import ActionCheck, RunStatus, StatusQuery
from tests.coordinator.harness import ask
from tests.processes import codeyard as run_codeyard
from tests.processes import kill, start, stop


async def test_up_runs_an_embedded_server_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"CODEYARD_DATA_DIR": str(tmp_path), "CODEYARD_NATS_PORT": str(port)}
    env.pop("NATS_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeyard",
        "up",
        "--no-agents",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        output = await output_until_ready(process, 20)
        assert f"nats://127.0.0.1:{port}".encode() in output

        url = f"nats://127.0.0.1:{port}"
        credentials = tmp_path / "nats" / "credentials"
        coordinator = await Bus.connect(
            url, credentials=read_credentials(credentials / "coordinator.env")
        )
        streams = {s.config.name for s in await coordinator.js.streams_info()}
        await coordinator.close()
        ctl = await Bus.connect(url, credentials=read_credentials(credentials / "ctl.env"))
        status = await ask(ctl, "status", StatusQuery())  # the coordinator child answers
        await ctl.close()
        assert {WORK_STREAM, RESULT_STREAM, EVENT_STREAM} <= streams
        assert isinstance(status, RunStatus)
        assert (tmp_path / "nats" / "jetstream").is_dir()
        with pytest.raises(nats.errors.NoServersError):  # the embedded server wants a user
            await Bus.connect(url, connect_attempts=1)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "nats-server still running"


async def run_to_end(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """`codeyard ARGS` expected to exit by itself; killed if it does not, so nothing leaks."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codeyard", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """No LLM, a private data dir and port: whatever goes wrong, the user's setup is safe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    return env | {"CODEYARD_DATA_DIR": str(tmp_path), "CODEYARD_NATS_PORT": str(free_port())}


async def test_up_with_an_unreachable_nats_url_fails_clearly(tmp_path: Path) -> None:
    env = isolated_env(tmp_path) | {"NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 1
    assert b"cannot reach NATS" in stderr


async def test_up_told_no_by_nats_says_so(tmp_path: Path) -> None:
    """A server that refuses the login was reported as unreachable, `LoginRefused()` its cause."""
    port = free_port()
    command = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), "--user", "u"]
    server = await asyncio.create_subprocess_exec(
        *command, "--pass", "p", stderr=asyncio.subprocess.DEVNULL
    )
    try:
        env = isolated_env(tmp_path) | {"NATS_URL": f"nats://127.0.0.1:{port}"}
        code, stderr = await run_to_end(env, "up", "--no-agents")
    finally:
        server.kill()
        await server.wait()
    assert code == 1
    assert (
        stderr.decode()
        .splitlines()[-1]
        .startswith(
            f"error: NATS at nats://127.0.0.1:{port} refused the login without credentials: "
        )
    )


async def test_a_data_dir_up_cannot_use_is_a_configuration_error_naming_it(
    tmp_path: Path,
) -> None:
    """It was the operating system's message alone, with exit 1."""
    (tmp_path / "a-file").write_text("")
    env = isolated_env(tmp_path) | {"CODEYARD_DATA_DIR": str(tmp_path / "a-file" / "data")}
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert stderr.decode() == (
        f"error: CODEYARD_DATA_DIR: cannot use {tmp_path / 'a-file' / 'data'}: Not a directory\n"
    )


@pytest.mark.parametrize(
    "service", [("coordinator",), ("worker", "review", "--name", "static")], ids=lambda s: s[0]
)
async def test_a_service_refuses_a_data_dir_it_cannot_use_as_up_does(
    tmp_path: Path, service: tuple[str, ...]
) -> None:
    """A coordinator took the lead with it, and then failed every run's clone."""
    (tmp_path / "a-file").write_text("")
    env = isolated_env(tmp_path) | {
        "CODEYARD_DATA_DIR": str(tmp_path / "a-file"),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # (not reached)
    }
    code, stderr = await run_to_end(env, *service)
    assert code == 2
    said = f"error: CODEYARD_DATA_DIR: cannot use {tmp_path / 'a-file'}: not a directory\n"
    assert stderr.decode().endswith(said), stderr


async def test_up_without_an_llm_explains_how_to_configure_one(tmp_path: Path) -> None:
    env = isolated_env(tmp_path) | {"CODEYARD_LOCAL_LLM": "0"}  # else codeyard[local] serves
    code, stderr = await run_to_end(env, "up")
    assert code == 2
    message = stderr.decode()
    assert "OPENAI_BASE_URL" in message
    assert "codeyard[local]" in message
    assert "CODEYARD_LLM_" in message
    # installed here, the local model is what the variable turned off: said, not to install it
    assert ("CODEYARD_LOCAL_LLM=0 turns it off" in message) == local_server_available()


async def test_a_restarted_up_keeps_the_credentials_it_generated(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    url = f"nats://127.0.0.1:{env['CODEYARD_NATS_PORT']}"
    ctl_file = tmp_path / "nats" / "credentials" / "ctl.env"
    seen = []
    for _ in range(2):
        up, _ = await start("-m", "codeyard", "up", "--no-agents", env=env, ready=b"Ctrl-C stops")
        try:
            credentials = read_credentials(ctl_file)
            assert credentials is not None
            seen.append(credentials)
            ctl = await Bus.connect(url, credentials=credentials)
            status = await ask(ctl, "status", StatusQuery())
            await ctl.close()
            assert isinstance(status, RunStatus)
        finally:
            await stop(up)
    assert seen[0] == seen[1]
    assert ctl_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "nats" / "nats-server.conf").stat().st_mode & 0o777 == 0o600


async def test_up_run_beside_a_folder_named_codeyard_starts_its_own_services(
    tmp_path: Path,
) -> None:
    """A `codeyard/` folder in the working directory (the clone, or another project's package)
    used to hide the real package from every child `up` started, which then crash-looped."""
    beside = tmp_path / "work"
    (beside / "codeyard").mkdir(parents=True)
    (beside / "codeyard" / "__init__.py").write_text("", encoding="utf-8")
    data = tmp_path / "data"
    env = isolated_env(data) | {"PYTHONUNBUFFERED": "1"}
    env.pop("NATS_URL", None)
    # `up` as its console script starts: the real package found, not the working directory
    real = Path(codeyard.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(real), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-P", "-m", "codeyard", "up", "--no-agents", "--no-dashboard"),
        cwd=beside,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = b""
    try:
        output = await output_until_ready(process, 60)
        url = f"nats://127.0.0.1:{env['CODEYARD_NATS_PORT']}"
        ctl = await Bus.connect(
            url, credentials=read_credentials(data / "nats" / "credentials" / "ctl.env")
        )
        try:
            status = await ask(ctl, "status", StatusQuery(), timeout=20)  # the coordinator child
        finally:
            await ctl.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            output += (await asyncio.wait_for(process.communicate(), 60))[0]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert isinstance(status, RunStatus), output.decode()
    assert b"ImportError" not in output


# --- stopping: Ctrl-C, SIGTERM, a closed terminal, a killed `up` -------------------------------


def up_env(tmp_path: Path) -> dict[str, str]:
    """`isolated_env`, with generated code allowed to run unsandboxed: these tests run none,
    and the coordinator then starts on a machine without docker or bwrap too."""
    env = isolated_env(tmp_path) | {"CODEYARD_SANDBOX": "process"}
    env.pop("NATS_URL", None)
    return env | {"CODEYARD_ALLOW_UNSANDBOXED": "1", "PYTHONUNBUFFERED": "1"}


def start_up(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
    """`up` in a session of its own, as a shell starts a job in the foreground: its process
    group is the one a Ctrl-C in the terminal signals. Output goes to tmp_path/up.log."""
    with (tmp_path / "up.log").open("wb") as log:
        return subprocess.Popen(
            argv or [sys.executable, "-m", "codeyard", "up", "--no-agents", "--no-dashboard"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def output_until_ready(process: asyncio.subprocess.Process, patience: float) -> bytes:
    """What `up` printed up to the line saying all its services run."""
    assert process.stdout is not None
    output = b""
    while b"Ctrl-C stops" not in output:
        line = await asyncio.wait_for(process.stdout.readline(), patience)
        assert line, f"codeyard up exited early: {output.decode()}"
        output += line
    return output


def wait_for_output(tmp_path: Path, up: subprocess.Popen[bytes], text: str) -> None:
    deadline = time.monotonic() + 120
    while text not in (log := (tmp_path / "up.log").read_text()):
        assert up.poll() is None, f"up exited with {up.returncode}:\n{log}"
        assert time.monotonic() < deadline, f"up never said {text!r}:\n{log}"
        time.sleep(0.05)


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":  # a zombie is dead, whoever reaps it (pid 1 of a container may not)
            found[int(stat.parent.name)] = (int(ppid), int(pgrp))
    return found


def children_of(pid: int) -> set[int]:
    return {child for child, (parent, _) in processes().items() if parent == pid}


def started_children(pid: int, count: int, patience: float = 20.0) -> set[int]:
    """The children of `pid` once there are `count` (or after `patience` seconds): `up` says
    its services run just before it starts them, which a busy machine may take a while to do."""
    deadline = time.monotonic() + patience
    while len(children := children_of(pid)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return children


def wait_until_gone(pids: set[int], timeout: float = 60.0) -> set[int]:
    """Those of `pids` still running after `timeout` seconds (killed, so none leaks)."""
    deadline = time.monotonic() + timeout
    while (left := pids & processes().keys()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def finish(up: subprocess.Popen[bytes], timeout: float = 90.0) -> int:
    """`up`'s exit status once it has stopped by itself; killed after `timeout` seconds."""
    try:
        return up.wait(timeout)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait()
        raise


@pytest.mark.parametrize("how", ["ctrl-c", "terminal closed"])
def test_ctrl_c_or_a_closed_terminal_stops_the_services_then_nats(tmp_path: Path, how: str) -> None:
    up = start_up(tmp_path, up_env(tmp_path))
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        children = started_children(up.pid, 3)
        assert len(children) == 3  # nats-server, coordinator, safety gate
        # nothing but `up` is in the group the terminal signals, nor hears the hangup
        assert {pid for pid, (_, group) in processes().items() if group == up.pid} == {up.pid}
        if how == "ctrl-c":
            os.killpg(up.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        else:
            os.kill(up.pid, signal.SIGHUP)
        code = finish(up)
    finally:
        kill(up)
        left = wait_until_gone(children)
    assert code == 0, (tmp_path / "up.log").read_text()
    assert not left
    # nats-server was stopped by `up`, after the services, not by the terminal under them
    server_log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert 'Trapped "terminated" signal' in server_log
    assert "interrupt" not in server_log
    assert (tmp_path / "up.log").read_text().rstrip().endswith("embedded nats-server stopped")


def test_a_killed_up_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives `up` no chance to stop its children; the kernel
    sends them SIGTERM instead, so no nats-server keeps the port the next `up` needs."""
    env = up_env(tmp_path)
    up = start_up(tmp_path, env)
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        children = started_children(up.pid, 3)
        assert len(children) == 3
        up.kill()
        up.wait()
        left = wait_until_gone(children)
    finally:
        kill(up)
        wait_until_gone(children, timeout=0)
    assert not left, "children of the killed up ran on"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(env["CODEYARD_NATS_PORT"]))) != 0


# `up` with its connection to NATS or its local model slowed down, to be signalled meanwhile.
PATCHED_UP = """
import asyncio, os, sys
import codeyard.launch as launch
import codeyard.llm.local

connect_delay, model_patience, *up_argv = sys.argv[1:]

async def slow_connect(*args, **kwargs):
    print("connecting to NATS", flush=True)
    await asyncio.sleep(float(connect_delay))
    return await real_connect(*args, **kwargs)

real_connect = launch.Bus.connect
launch.Bus.connect = slow_connect
# a local model that never answers, as one still loading does (or runs MODEL_CODE instead)
codeyard.llm.local.local_server_available = lambda: True
launch.smollm2_model = lambda: "/nonexistent.gguf"
model_code = os.environ.get("MODEL_CODE", "import time; time.sleep(600)")
launch.local_server_command = lambda model, port: [sys.executable, "-c", model_code]
launch.LOCAL_MODEL_PATIENCE = float(model_patience)
from codeyard.cli import main
sys.argv = ["codeyard", "up", *up_argv]
main()
"""


def patched_up(
    tmp_path: Path,
    *argv: str,
    connect_delay: float = 0,
    model_patience: float = 300,
    model_code: str | None = None,
) -> subprocess.Popen[bytes]:
    env = up_env(tmp_path) | ({"MODEL_CODE": model_code} if model_code else {})
    command = [sys.executable, "-c", PATCHED_UP, str(connect_delay), str(model_patience)]
    return start_up(tmp_path, env, *command, "--no-dashboard", *argv)


def test_sigterm_while_up_connects_stops_the_embedded_server(tmp_path: Path) -> None:
    up = patched_up(tmp_path, "--no-agents", connect_delay=600)
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "connecting to NATS")
        children = children_of(up.pid)  # nats-server, started just before
        up.send_signal(signal.SIGTERM)
        code = finish(up)
    finally:
        kill(up)
        left = wait_until_gone(children)
    assert code == 0, (tmp_path / "up.log").read_text()
    assert len(children) == 1
    assert not left, "nats-server ran on"
    assert "embedded nats-server stopped" in (tmp_path / "up.log").read_text()


def test_ctrl_c_while_the_local_model_loads_stops_up(tmp_path: Path) -> None:
    up = patched_up(tmp_path, "--coders", "1")
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "starting the local model")
        children = children_of(up.pid)  # nats-server and the model's server
        os.killpg(up.pid, signal.SIGINT)
        code = finish(up, timeout=60)  # not after the 300 s it waits for the model
    finally:
        kill(up)
        left = wait_until_gone(children)
    assert code == 0, (tmp_path / "up.log").read_text()
    assert not left


def test_a_second_ctrl_c_kills_what_is_still_stopping(tmp_path: Path) -> None:
    """A service slow to stop (here the local model's server, deaf to SIGTERM) would hold
    `up` for the whole stop timeout (40 s); the second Ctrl-C says "now"."""
    deaf = tmp_path / "deaf"
    model_code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(deaf)!r}, 'w').close(); time.sleep(600)"
    )
    up = patched_up(tmp_path, "--coders", "1", model_code=model_code)
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "starting the local model")
        while not deaf.exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            time.sleep(0.05)
        children = children_of(up.pid)
        os.killpg(up.pid, signal.SIGINT)
        time.sleep(0.5)  # the first one is being acted on: the model's server ignores it
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        os.killpg(up.pid, signal.SIGINT)
        code = finish(up, timeout=30)  # the stop timeout would be 40 s
    finally:
        kill(up)
        left = wait_until_gone(children)
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "stopping now: killing the services still stopping" in output
    assert "stop hurried" in output
    assert not left


def test_a_local_model_that_never_answers_is_reported_as_such(tmp_path: Path) -> None:
    up = patched_up(tmp_path, "--coders", "1", model_patience=1)
    try:
        code = finish(up)
    finally:
        kill(up)
    output = (tmp_path / "up.log").read_text()
    assert code == 1, output
    assert "error: the local model did not start:" in output
    assert "did not answer within 1s" in output
    assert "NATS" not in output.split("starting the local model")[1]  # it was not NATS


def test_a_local_model_refusing_its_configuration_stops_up_at_once(tmp_path: Path) -> None:
    refuses = "import sys; print('cannot load the model file', file=sys.stderr); sys.exit(2)"
    up = patched_up(tmp_path, "--coders", "1", model_code=refuses)
    try:
        code = finish(up, timeout=60)  # not after the 300 s it waits for a model to answer
    finally:
        kill(up)
    output = (tmp_path / "up.log").read_text()
    assert code == 2, output
    assert "error: llm refused to start" in output
    assert "cannot load the model file" in output.split("error: llm refused")[1]
    assert "embedded nats-server stopped" in output


# --- configuration `up` checks before starting anything ----------------------------------------


async def test_up_refuses_a_dashboard_token_too_short_before_starting_anything(
    tmp_path: Path,
) -> None:
    """The dashboard, which checks its token, runs as a child: `up` used to start everything,
    print a sign-in URL, and restart the failing dashboard for ever."""
    env = isolated_env(tmp_path) | {"CODEYARD_DASHBOARD_TOKEN": "short"}
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert b"CODEYARD_DASHBOARD_TOKEN: the dashboard token must be at least 16" in stderr
    assert not (tmp_path / "nats").exists()


async def test_up_refuses_a_dashboard_address_it_cannot_listen_on_before_starting_anything(
    tmp_path: Path,
) -> None:
    """It said "is in use (set CODEYARD_DASHBOARD_PORT)" of any address it could not bind, and
    ran without the dashboard."""
    env = isolated_env(tmp_path) | {"CODEYARD_DASHBOARD_HOST": "192.0.2.1"}  # (TEST-NET-1)
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert stderr.startswith(b"error: CODEYARD_DASHBOARD_HOST: cannot listen on 192.0.2.1:"), stderr
    assert b"in use" not in stderr
    assert not (tmp_path / "nats").exists()


async def test_up_refuses_without_a_sandbox_before_starting_anything(tmp_path: Path) -> None:
    """The coordinator refused to start, once `up` had said everything was running."""
    env = isolated_env(tmp_path) | {"CODEYARD_SANDBOX": "process"}  # not allowed unsandboxed
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert stderr.startswith(b"error: refusing to run generated code without a sandbox"), stderr
    assert not (tmp_path / "nats").exists()


POLICY = """
extends = "default"

[[rules]]
name = "make-test"
actions = ["run_command"]
effect = "allow"
reason = "our Makefile's test target"
commands = ['^make test$']
"""


async def test_up_runs_its_gate_with_the_policy_given(tmp_path: Path) -> None:
    """A policy of one's own had to be served by a second gate, beside up's: each check went to
    one of the two, and half of them ignored it."""
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    env = up_env(tmp_path)
    up = start_up(
        tmp_path,
        env,
        *(sys.executable, "-m", "codeyard", "up", "--no-agents", "--no-dashboard"),
        *("--policy", str(tmp_path / "policy.toml")),
    )
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        url = f"nats://127.0.0.1:{env['CODEYARD_NATS_PORT']}"
        credentials = read_credentials(tmp_path / "nats" / "credentials" / "coordinator.env")
        bus = await Bus.connect(url, credentials=credentials)
        try:
            gate = BusGateClient(bus)
            check = ActionCheck(run_id="r1", action="run_command", detail="make test")
            for _ in range(150):  # up says it runs just before it starts its services
                with contextlib.suppress(GateUnavailable):
                    decisions = [await gate.check(check)]
                    break
                await asyncio.sleep(0.2)
            decisions += [await gate.check(check) for _ in range(3)]
        finally:
            await bus.close()
    finally:
        up.send_signal(signal.SIGTERM)
        assert finish(up) == 0
    reason = "our Makefile's test target: make test"
    assert {(d.decision, d.reason) for d in decisions} == {("allow", reason)}
    # the gate says which policy it serves as it starts (it said nothing until a decision)
    assert (
        f"serving cy.gate.check with {tmp_path / 'policy.toml'}"
        in (tmp_path / "up.log").read_text()
    )


async def test_up_refuses_a_policy_the_gate_would_refuse_before_starting_anything(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.toml").write_text('[defaults]\nrun_command = "sometimes"\n')
    env = isolated_env(tmp_path)
    policy = str(tmp_path / "policy.toml")
    code, stderr = await run_to_end(env, "up", "--no-agents", "--policy", policy)
    assert code == 2
    assert stderr.startswith(f"error: {policy}: field 'defaults.run_command'".encode()), stderr
    assert not (tmp_path / "nats").exists()


async def test_up_refuses_a_public_origin_that_is_no_origin_before_starting_anything(
    tmp_path: Path,
) -> None:
    env = isolated_env(tmp_path) | {
        "CODEYARD_DASHBOARD_PUBLIC_ORIGINS": "https://codeyard.example.com/dashboard"
    }
    code, stderr = await run_to_end(env, "up", "--no-agents")
    assert code == 2
    assert b"CODEYARD_DASHBOARD_PUBLIC_ORIGINS: " in stderr
    assert not (tmp_path / "nats").exists()


def test_a_second_up_on_a_running_ones_data_dir_or_port_refuses_in_one_line(
    tmp_path: Path,
) -> None:
    """It used to start a nats-server on the running one's store, print that server's whole
    log and exit 1."""
    first_env = up_env(tmp_path)
    first = start_up(tmp_path, first_env)
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, first, "Ctrl-C stops")
        children = children_of(first.pid)
        server_log = tmp_path / "nats" / "nats-server.log"
        logged = server_log.read_bytes()
        command = [sys.executable, "-m", "codeyard", "up", "--no-agents", "--no-dashboard"]

        same_dir = first_env | {"CODEYARD_NATS_PORT": str(free_port())}
        on_its_dir = subprocess.run(command, env=same_dir, capture_output=True, timeout=60)
        other_dir = up_env(tmp_path / "other") | {
            "CODEYARD_NATS_PORT": first_env["CODEYARD_NATS_PORT"]
        }
        on_its_port = subprocess.run(command, env=other_dir, capture_output=True, timeout=60)

        assert on_its_dir.returncode == 2, on_its_dir.stderr
        assert on_its_dir.stderr.decode() == (
            f"error: another codeyard up (pid {first.pid}) runs the NATS server of "
            f"{tmp_path / 'nats'}: stop it first, or give this one a CODEYARD_DATA_DIR of its own\n"
        )
        assert on_its_port.returncode == 2, on_its_port.stderr
        port = first_env["CODEYARD_NATS_PORT"]
        assert on_its_port.stderr.decode() == (
            f"error: port {port} on 127.0.0.1 is in use (another codeyard up, or another "
            "program): stop it, or set CODEYARD_NATS_PORT to a free port\n"
        )
        assert not (tmp_path / "other" / "nats" / "jetstream").exists()
        assert server_log.read_bytes() == logged  # no second server started on that store
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGINT)
        code = finish(first)
    finally:
        kill(first)
        left = wait_until_gone(children)
    assert code == 0
    assert not left


def up_until_ctrl_c(
    tmp_path: Path,
    env: dict[str, str],
    then: Callable[[subprocess.Popen[bytes]], None] = lambda up: None,
) -> tuple[int, str]:
    """`up --no-agents` until it runs everything and `then` returned, stopped by a Ctrl-C: its
    exit status and output. Its children are gone when this returns."""
    up = start_up(tmp_path, env, sys.executable, "-m", "codeyard", "up", "--no-agents")
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        then(up)
        children = children_of(up.pid)
        os.killpg(up.pid, signal.SIGINT)
        code = finish(up)
    finally:
        kill(up)
        wait_until_gone(children)
    return code, (tmp_path / "up.log").read_text()


def test_up_does_not_announce_a_dashboard_whose_port_is_taken(tmp_path: Path) -> None:
    """The dashboard child would exit 2 on the taken port while `up` printed its address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = up_env(tmp_path) | {
            "CODEYARD_DASHBOARD_PORT": str(taken),
            "CODEYARD_DASHBOARD_TOKEN": "dashboard-token-of-the-tests",
        }
        code, output = up_until_ctrl_c(tmp_path, env)
    assert code == 0, output
    assert f"dashboard not started: 127.0.0.1:{taken} is in use" in output
    assert "dashboard: http" not in output
    assert "running: coordinator, safety-gate; Ctrl-C stops" in output


def test_up_announces_its_dashboard_once_it_listens(tmp_path: Path) -> None:
    """The dashboard child says where it serves once it does; `up` said it too, before."""
    env = up_env(tmp_path) | {
        "CODEYARD_DASHBOARD_PORT": str(free_port()),
        "CODEYARD_DASHBOARD_TOKEN": "dashboard-token-of-the-tests",
    }

    def answered(up: subprocess.Popen[bytes]) -> None:
        # The child says where it serves before it answers anything: once it answered, every
        # announcement there is to make was made.
        base = f"http://127.0.0.1:{env['CODEYARD_DASHBOARD_PORT']}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base, timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # it answered (without the token: refused)
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
                time.sleep(0.1)

    code, output = up_until_ctrl_c(tmp_path, env, then=answered)
    assert code == 0, output
    port = env["CODEYARD_DASHBOARD_PORT"]
    # a token set is a secret: not printed (one `up` makes is, with the link)
    announced = f"dashboard: http://127.0.0.1:{port}/ (sign in with the token in "
    assert output.count("dashboard: http") == 1, output
    assert announced in output
    assert "dashboard-token-of-the-tests" not in output


def test_the_sign_in_link_up_printed_outlives_a_dashboard_restart(tmp_path: Path) -> None:
    """With no token set, `up` makes one for its whole life: a dashboard that crashed and was
    started again used to make a new one, and the link printed first stopped signing in."""
    env = up_env(tmp_path) | {"CODEYARD_DASHBOARD_PORT": str(free_port())}
    env.pop("CODEYARD_DASHBOARD_TOKEN", None)

    def links() -> list[str]:
        log = (tmp_path / "up.log").read_text()
        return [line for line in log.splitlines() if line.startswith("dashboard: http")]

    def restart_the_dashboard(up: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not links():
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.05)
        (dashboard,) = (
            pid
            for pid in children_of(up.pid)
            if b"dashboard" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        )
        os.kill(dashboard, signal.SIGKILL)
        while len(links()) < 2:
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.05)

    code, output = up_until_ctrl_c(tmp_path, env, then=restart_the_dashboard)
    assert code == 0, output
    first, second = links()[:2]
    assert "/signin#token=" in first
    assert first == second  # the same token: the first link signs in still
    assert "dashboard exited with -9; restarting" in output


def test_up_s_own_warnings_are_json_lines_when_its_services_log_json(tmp_path: Path) -> None:
    """Its services' lines were JSON, and on the same stderr its own (a service restarted) were
    bare text that a log pipeline reading JSON dropped or choked on."""
    env = up_env(tmp_path) | {"CODEYARD_LOG_FORMAT": "json"}

    def restart_the_gate(up: subprocess.Popen[bytes]) -> None:
        (gate,) = (
            pid
            for pid in children_of(up.pid)
            if b"gate" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        )
        os.kill(gate, signal.SIGKILL)
        wait_for_output(tmp_path, up, "restarting in")

    code, output = up_until_ctrl_c(tmp_path, env, then=restart_the_gate)
    assert code == 0, output
    [line] = [line for line in output.splitlines() if "restarting in" in line]
    said = json.loads(line)
    assert said["message"].startswith("safety-gate exited with -9; restarting in")
    assert (said["level"], said["process"]) == ("WARNING", "up")


def with_env(marker: str) -> set[int]:
    """The live processes whose environment holds `marker` (`up`'s children carry its data dir)."""
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker.encode() in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
    return found


# `codeyard up` whose own check of the sandbox passes, as if the sandbox went away just after:
# its services, processes of their own, find none.
SANDBOX_GONE_AFTER_UP_CHECKED = (
    "import codeyard.sandbox; codeyard.sandbox.default_sandbox = lambda settings: None; "
    "from codeyard.cli import main; main()"
)


def test_a_service_refusing_its_configuration_stops_up_with_status_2(tmp_path: Path) -> None:
    """A service that exits with 2 says its configuration is wrong (here the coordinator: no
    sandbox it may use), which no restart mends. `up` used to run on without it for ever."""
    env = up_env(tmp_path)
    del env["CODEYARD_ALLOW_UNSANDBOXED"]  # the process backend is then refused
    marker = f"CODEYARD_DATA_DIR={tmp_path}"
    up = start_up(
        tmp_path,
        env,
        *(sys.executable, "-c", SANDBOX_GONE_AFTER_UP_CHECKED, "up", "--no-agents"),
        "--no-dashboard",
    )
    try:
        code = finish(up, timeout=60)  # by itself
    finally:
        kill(up)
        left = wait_until_gone(with_env(marker) - {os.getpid()}, timeout=10)
    output = (tmp_path / "up.log").read_text()
    assert code == 2, output
    assert not left, output  # the safety gate and nats-server too
    stopped, error = output.split("embedded nats-server stopped\n")
    assert "coordinator exited with 2 (bad configuration" in stopped
    assert error.startswith(
        "error: coordinator refused to start (it exited with 2: bad configuration), so up "
        "stopped everything. Its last lines on stderr:\n  error: refusing to run generated code "
        "without a sandbox"
    ), output
    assert error.rstrip().endswith("otherwise use the docker or bwrap backend"), output
    # stopped as on Ctrl-C: the services, then nats-server
    assert 'Trapped "terminated" signal' in (tmp_path / "nats" / "nats-server.log").read_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(env["CODEYARD_NATS_PORT"]))) != 0


def test_down_stops_the_up_of_the_data_dir_as_ctrl_c_does(tmp_path: Path) -> None:
    """`up` stopped only from its own terminal (or by a signal to a pid one had to find)."""
    env = up_env(tmp_path)
    up = start_up(tmp_path, env)
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        down = run_codeyard(env, "down", timeout=120)
        code = finish(up, timeout=60)
    finally:
        kill(up)
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"stopped codeyard up (pid {up.pid})\n"
    assert code == 0  # as on Ctrl-C: everything stopped in order
    assert "embedded nats-server stopped" in (tmp_path / "up.log").read_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(env["CODEYARD_NATS_PORT"]))) != 0

    again = run_codeyard(env, "down", timeout=60)  # nothing left to stop: said, not an error
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"no codeyard up runs with the data dir {tmp_path}\n"


def test_a_killed_nats_server_is_started_again_on_its_store(tmp_path: Path) -> None:
    """Nobody watched it: `up` ran on with every service retrying its connection for ever,
    and runs stood still until `up` itself was restarted."""
    env = up_env(tmp_path)
    up = start_up(tmp_path, env)
    children: set[int] = set()
    try:
        wait_for_output(tmp_path, up, "Ctrl-C stops")
        children = started_children(up.pid, 3)
        server_name = f"codeyard-{env['CODEYARD_NATS_PORT']}"
        [server] = [
            pid for pid in children if server_name in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        os.kill(server, signal.SIGKILL)
        wait_for_output(tmp_path, up, "the embedded nats-server runs again at")
        status = run_codeyard(env, "status", "--json", timeout=60)  # served again
        os.killpg(up.pid, signal.SIGINT)
        code = finish(up)
    finally:
        kill(up)
        left = wait_until_gone(children | children_of(up.pid))
    log = (tmp_path / "up.log").read_text()
    assert status.returncode == 0, status.stderr
    assert "the embedded nats-server exited: exit status -9" in log
    assert code == 0, log
    assert not left
