"""A docker sandbox container never outlives the codeyard that started it by long: it stops
itself a grace after its wall time (the image's `timeout`), and any codeyard using the engine
removes one that is long past the deadline on its label."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from codeyard.sandbox import DockerSandbox, Limits, MiB
from codeyard.sandbox import docker as docker_module
from codeyard.sandbox.docker import DEADLINE_GRACE, DEADLINE_LABEL, LABEL, SWEEP_GRACE
from tests.sandbox.host import processes_with
from tests.sandbox.workloads import SLACK_SECONDS, run_python

WALL = 3.0

# A codeyard process running one sandboxed command that never ends by itself, one process of
# which leaves the command's process group and session.
RUNNER = """
import asyncio, sys
from pathlib import Path
from codeyard.sandbox import DockerSandbox, Limits, MiB, shell_command

host, workdir, marker, wall = sys.argv[1:]
line = (
    f"setsid sh -c 'while :; do sleep 1; done; : {marker}' & "
    f"while :; do sleep 1; done; : {marker}"
)
limits = Limits(wall_seconds=float(wall), memory_bytes=128 * MiB, pids=16)
asyncio.run(DockerSandbox(docker_host=host).run(Path(workdir), shell_command(line), limits))
"""


@pytest.fixture
def removed_afterwards(docker_sandbox: DockerSandbox) -> Iterator[list[str]]:
    """Container ids to remove when the test ends, whatever it left."""
    ids: list[str] = []
    yield ids
    for container in ids:
        with contextlib.suppress(docker.errors.NotFound):
            docker_sandbox.client.api.remove_container(container, force=True)


def _containers_with(sandbox: DockerSandbox, marker: str) -> list[str]:
    found = sandbox.client.api.containers(all=True, filters={"label": LABEL})
    return [c["Id"] for c in found if marker in c.get("Command", "")]


def _running(sandbox: DockerSandbox, container: str) -> bool:
    try:
        return bool(sandbox.client.api.inspect_container(container)["State"]["Running"])
    except docker.errors.NotFound:
        return False


def test_a_container_stops_itself_when_its_codeyard_is_killed_mid_run(
    docker_sandbox: DockerSandbox, tmp_path: Path, removed_afterwards: list[str]
) -> None:
    """The wall time is enforced by codeyard, which a SIGKILL stops before it can kill the
    container: the container's own deadline must stop it instead."""
    marker = f"orphan-{uuid.uuid4().hex}"
    arguments = [docker_sandbox.docker_host, str(tmp_path), marker, str(WALL)]
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RUNNER), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        give_up = time.monotonic() + 2 * SLACK_SECONDS
        while not (containers := _containers_with(docker_sandbox, marker)):
            assert runner.poll() is None, "the runner ended before its container started"
            assert time.monotonic() < give_up, "no container was started"
            time.sleep(0.1)
        removed_afterwards.extend(containers)
        [container] = containers
        while not _running(docker_sandbox, container):
            assert time.monotonic() < give_up, "the container did not start running"
            time.sleep(0.1)
        seen = time.monotonic()
        time.sleep(0.5)  # both loops of the command are running
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert processes_with(marker), "the command does not run after its codeyard died"

    deadline = seen + WALL + DEADLINE_GRACE + SLACK_SECONDS
    while _running(docker_sandbox, container):
        assert time.monotonic() < deadline, "the container outlived its codeyard"
        time.sleep(0.5)
    assert time.monotonic() - seen >= WALL  # not stopped before its wall time
    assert processes_with(marker) == []


async def test_the_command_cannot_stop_its_containers_deadline(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """A command that stopped `timeout` (SIGSTOP) kept its container running for ever once its
    codeyard died: the deadline keeper and the init belong to a user it cannot signal."""
    code = """
        import os, signal
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                name = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[0]
            except OSError:
                continue
            if int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGSTOP)
                    print("STOPPED", pid, name.decode())
                except PermissionError:
                    print("refused", pid, name.decode())
        status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines())
        print("uid", os.getuid(), "capbnd", status["CapBnd"].strip())
    """
    outcome = await run_python(docker_sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    assert "STOPPED" not in outcome.output
    assert "/usr/bin/timeout" in outcome.output  # it was found, and refused
    assert "refused 1 " in outcome.output  # the init
    assert "uid 65534 capbnd 0000000000000000" in outcome.output


@pytest.mark.parametrize("sweeper", ["probe", "run"])
async def test_running_containers_long_past_their_deadline_are_removed(
    docker_sandbox: DockerSandbox, tmp_path: Path, removed_afterwards: list[str], sweeper: str
) -> None:
    """What the container's own deadline missed (an image whose `timeout` did not fire) goes at
    a codeyard's probe, or at a run of a codeyard that has been running for a while. Running
    containers within their deadline, or of a codeyard that labels none, are left alone."""
    sandbox = DockerSandbox(docker_host=docker_sandbox.docker_host)
    if sweeper == "run":
        sandbox.probe()
    api = docker_sandbox.client.api
    now = time.time()
    deadlines = {
        "overdue": f"{now - SWEEP_GRACE - 60:.0f}",
        "within": f"{now + 60:.0f}",
        "nearly overdue": f"{now - SWEEP_GRACE + 60:.0f}",
        "unlabelled": None,
    }
    containers = {}
    for name, deadline in deadlines.items():
        labels = {LABEL: "1"} | ({DEADLINE_LABEL: deadline} if deadline else {})
        created = api.create_container(
            docker_sandbox.image,
            ["sleep", "300"],
            labels=labels,
            user="65534:65534",
            host_config=api.create_host_config(network_mode="none", init=True),
        )
        containers[name] = created["Id"]
        removed_afterwards.append(created["Id"])
        api.start(created["Id"])
    assert all(_running(docker_sandbox, c) for c in containers.values())

    if sweeper == "probe":
        sandbox.probe()
    else:
        sandbox._swept = time.monotonic() - 3600  # the last sweep was long ago
        outcome = await run_python(sandbox, tmp_path, "print('ran')")
        assert outcome.exit_code == 0, outcome.output

    listed = {c["Id"] for c in api.containers(all=True, filters={"label": LABEL})}
    assert containers["overdue"] not in listed
    for name in ("within", "nearly overdue", "unlabelled"):
        assert _running(docker_sandbox, containers[name]), name


async def test_a_run_its_container_stopped_at_its_own_deadline_is_reported_timed_out(
    docker_sandbox: DockerSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine stalled long enough for the container's deadline to strike before
    codeyard's kill, the run is still the one that reached its wall time."""
    monkeypatch.setattr(docker_module, "DEADLINE_GRACE", -3.0)  # strikes 3 s before codeyard
    limits = Limits(wall_seconds=5, memory_bytes=128 * MiB, pids=8)
    outcome = await run_python(
        docker_sandbox, tmp_path, "import time; time.sleep(60)", limits=limits
    )
    assert outcome.duration_seconds < limits.wall_seconds  # codeyard's kill did not come first
    assert (outcome.exit_code, outcome.timed_out) == (137, True)
    assert outcome.killed_by_limit == "wall_time"
