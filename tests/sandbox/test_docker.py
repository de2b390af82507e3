"""Tests of what is particular to the docker backend: its refusals, the loan of the workdir to
the sandbox user. Containment (the memory bound of the whole container too) is in
test_containment.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from codeyard.sandbox import DockerSandbox, Limits, MiB, SandboxUnavailable
from codeyard.sandbox import docker as docker_module
from codeyard.sandbox.docker import CODEYARD_DOCKER_SOCKET, resolve_docker_host
from codeyard.sandbox.protocol import SANDBOX_UID
from tests.sandbox.host import processes_with
from tests.sandbox.workloads import SLACK_SECONDS, run_python


def test_an_unreachable_engine_is_refused_saying_how_to_start_one(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    with pytest.raises(SandboxUnavailable, match="no Docker engine answers") as refused:
        DockerSandbox(docker_host=host).probe()
    assert host in str(refused.value)
    assert "scripts/docker-engine.sh" in str(refused.value)
    assert "CODEYARD_DOCKER_HOST" in str(refused.value)


def test_a_missing_image_is_refused_saying_how_to_build_it(docker_sandbox: DockerSandbox) -> None:
    missing = DockerSandbox(docker_host=docker_sandbox.docker_host, image="codeyard-sandbox:nope")
    with pytest.raises(SandboxUnavailable, match="codeyard-sandbox:nope") as refused:
        missing.probe()
    assert "scripts/build-sandbox-image.sh" in str(refused.value)


def test_an_engine_where_the_seccomp_filter_cannot_be_installed_is_refused(
    docker_sandbox: DockerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers would run nothing (exit 126): said at once, not run after run."""
    monkeypatch.setattr(docker_module, "sandbox_filter", lambda: bytes(8))  # the kernel refuses it
    with pytest.raises(SandboxUnavailable, match="seccomp filter cannot be installed"):
        DockerSandbox(docker_host=docker_sandbox.docker_host).probe()


def test_the_engine_is_found_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_docker_host("tcp://127.0.0.1:2375") == "tcp://127.0.0.1:2375"
    monkeypatch.setenv("DOCKER_HOST", "unix:///elsewhere.sock")
    assert resolve_docker_host("") == "unix:///elsewhere.sock"
    monkeypatch.delenv("DOCKER_HOST")
    expected = (
        f"unix://{CODEYARD_DOCKER_SOCKET}"
        if CODEYARD_DOCKER_SOCKET.is_socket()
        else "unix:///var/run/docker.sock"
    )
    assert resolve_docker_host("") == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="the workdir is lent only when codeyard is root")
async def test_the_workdir_is_lent_to_the_sandbox_user_and_given_back(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    (workdir / "pkg").mkdir(parents=True)
    (workdir / "pkg" / "mine.txt").write_text("mine")
    # A hard link to a file outside the workdir, as `git clone --local` makes for its objects:
    # lending it would hand the outside file to the sandbox user too.
    outside = tmp_path / "object"
    outside.write_text("shared object")
    os.link(outside, workdir / "object")
    code = """
        import os
        print("owner", os.stat("pkg/mine.txt").st_uid, "linked", os.stat("object").st_uid)
        open("pkg/mine.txt", "a").write(" and the sandbox's")
        os.mkdir("made")
        open("made/new.txt", "w").write("new")
        try:
            open("object", "a").write("tampered")
            print("TAMPERED")
        except OSError as exc:
            print("object untouched:", type(exc).__name__)
    """
    outcome = await run_python(docker_sandbox, workdir, code)
    assert outcome.exit_code == 0, outcome.output
    assert "owner 65534 linked 0" in outcome.output
    assert "object untouched: PermissionError" in outcome.output
    assert outside.read_text() == "shared object"
    assert outside.stat().st_uid == 0
    caller = os.getuid(), os.getgid()
    for path in [workdir, *workdir.rglob("*")]:
        assert (path.lstat().st_uid, path.lstat().st_gid) == caller, path
    assert (workdir / "pkg" / "mine.txt").read_text() == "mine and the sandbox's"
    assert (workdir / "made" / "new.txt").read_text() == "new"


@pytest.mark.skipif(os.geteuid() != 0, reason="the workdir is lent only when codeyard is root")
async def test_a_workdir_is_not_given_back_while_its_container_may_still_run(
    docker_sandbox: DockerSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Giving back chowns the workdir by path, as root: while the command may still run, a
    directory it swaps for a symlink could redirect that outside. So when the engine fails to
    remove the container the workdir stays lent."""
    api = docker_sandbox.client.api
    remove = api.remove_container
    unremoved: list[str] = []

    def failing_remove(container: str, **kwargs: object) -> None:
        unremoved.append(container)
        raise docker.errors.APIError("the engine is busy")

    monkeypatch.setattr(api, "remove_container", failing_remove)
    try:
        outcome = await run_python(docker_sandbox, tmp_path, "open('made', 'w').write('x')")
    finally:
        monkeypatch.undo()
        for container in unremoved:
            remove(container, force=True)
    assert outcome.exit_code == 0, outcome.output
    assert unremoved
    assert (tmp_path / "made").stat().st_uid == SANDBOX_UID
    assert tmp_path.stat().st_uid == SANDBOX_UID
    assert "may still run" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="the workdir is lent only when codeyard is root")
async def test_a_container_another_codeyard_is_removing_is_waited_for(
    docker_sandbox: DockerSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another codeyard's sweep removing the container (the engine answers HTTP 409) counted as
    a failure: the container was gone a moment later, but its workdir stayed lent."""
    api = docker_sandbox.client.api
    remove = api.remove_container

    def removed_by_another(container: str, **kwargs: object) -> None:
        other = threading.Timer(0.3, remove, [container], {"force": True})
        other.start()
        busy = requests.Response()
        busy.status_code = 409
        raise docker.errors.APIError(
            "409 Client Error: Conflict",
            busy,
            f"removal of container {container} is already in progress",
        )

    monkeypatch.setattr(api, "remove_container", removed_by_another)
    outcome = await run_python(docker_sandbox, tmp_path, "open('made', 'w').write('x')")
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "made").stat().st_uid == 0  # given back
    assert "may still run" not in caplog.text


async def test_a_run_cancelled_while_its_container_is_created_removes_it(
    docker_sandbox: DockerSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's id came back to a run that was no longer there: the container stayed
    in the engine, `created`, until a sweep long after its deadline."""
    marker = f"cancelled-{uuid.uuid4().hex}"
    create = docker_sandbox._create
    created = threading.Event()

    def slow_create(*args: Any) -> str:
        container = create(*args)
        created.set()
        time.sleep(0.5)  # the engine answers late; the run is cancelled meanwhile
        return container

    monkeypatch.setattr(docker_sandbox, "_create", slow_create)
    run = asyncio.ensure_future(run_python(docker_sandbox, tmp_path, f"print('{marker}')"))
    await asyncio.to_thread(created.wait, SLACK_SECONDS)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    left = docker_sandbox.client.api.containers(all=True, filters={"label": docker_module.LABEL})
    assert [c["Id"] for c in left if marker in c.get("Command", "")] == []
    if os.geteuid() == 0:
        assert tmp_path.stat().st_uid == 0  # the workdir was given back


class EngineProxy:
    """A unix socket passing everything on to the engine's, until `cut`: every connection is
    closed then, and new ones are refused, as when the engine stops."""

    def __init__(self, path: Path, engine: str) -> None:
        self.host = f"unix://{path}"
        self._engine = engine.removeprefix("unix://")
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._listener.close()
        for each in self._sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by `cut`
            while True:
                client, _ = self._listener.accept()
                engine = socket.socket(socket.AF_UNIX)
                engine.connect(self._engine)
                self._sockets += [client, engine]
                for source, sink in ((client, engine), (engine, client)):
                    threading.Thread(target=self._pass, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pass(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)


async def test_an_engine_gone_mid_run_is_told_as_the_sandbox_unavailable(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """The HTTP client's own errors came through as they were: the tester, which hands the work
    back for later when the sandbox is unavailable, failed it with a traceback instead."""
    marker = f"engine-gone-{uuid.uuid4().hex}"
    proxy = EngineProxy(tmp_path / "engine.sock", docker_sandbox.docker_host)
    sandbox = DockerSandbox(docker_host=proxy.host)
    workdir = tmp_path / "work"
    workdir.mkdir()
    limits = Limits(wall_seconds=30, memory_bytes=128 * MiB, pids=8)
    code = f"import time; print('started', flush=True); time.sleep(60)  # {marker}"
    running = asyncio.ensure_future(run_python(sandbox, workdir, code, limits=limits))
    try:
        await asyncio.to_thread(_wait_running, docker_sandbox, marker)
        proxy.cut()
        with pytest.raises(SandboxUnavailable, match="failed to run a sandbox container"):
            await asyncio.wait_for(running, SLACK_SECONDS)
        with pytest.raises(SandboxUnavailable, match="Connection refused"):
            await run_python(sandbox, workdir, "print('again')")
    finally:
        running.cancel()
        for container in _containers_running(docker_sandbox, marker):
            docker_sandbox.client.api.remove_container(container, force=True)


def _wait_running(sandbox: DockerSandbox, marker: str) -> None:
    give_up = time.monotonic() + SLACK_SECONDS
    while not _containers_running(sandbox, marker):
        assert time.monotonic() < give_up, "the container did not start"
        time.sleep(0.1)


def _containers_running(sandbox: DockerSandbox, marker: str) -> list[str]:
    found = sandbox.client.api.containers(filters={"label": docker_module.LABEL})
    return [c["Id"] for c in found if marker in c.get("Command", "")]


async def test_many_runs_stopped_at_once_all_end(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """More concurrent runs than the event loop's default executor has threads, all hitting
    their wall time together: each must still be killed and removed."""
    marker = f"many-{uuid.uuid4().hex}"
    dirs = [tmp_path / str(i) for i in range(10)]
    for d in dirs:
        d.mkdir()
    limits = Limits(wall_seconds=2, memory_bytes=128 * MiB, pids=8)
    code = "import time; time.sleep(60)"
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(run_python(docker_sandbox, d, code, marker, limits=limits) for d in dirs)
    )
    assert time.monotonic() - started < 2 + 2 * SLACK_SECONDS
    assert [o.killed_by_limit for o in outcomes] == ["wall_time"] * len(dirs)
    assert processes_with(marker) == []
