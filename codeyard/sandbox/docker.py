"""`DockerSandbox`: runs a command in a throwaway Docker container with resource limits.

What the command sees and may do:

- Network: `network_mode="none"`: only the container's own loopback; nothing on the host or
  outside is reachable.
- Filesystem: the image's root, read-only; the workdir bind-mounted read-write at `/workspace`
  (`SANDBOX_WORKDIR`, as with bwrap), its `.git` read-only (`workdir.git_metadata`); a
  size-capped tmpfs at /tmp (also HOME) and /dev/shm. Nothing of the host but the workdir
  exists inside.
- Identity: uid/gid 65534 (nobody), no capabilities, `no-new-privileges`. The container's init
  and its deadline keeper (below) run as root with only what dropping to that user takes
  (SETUID, SETGID, SETPCAP), so the command cannot signal them. The workdir
  is lent to uid 65534 for the run and given back afterwards (`codeyard.sandbox.workdir_loan`
  says exactly what changes owner and why that is safe). When codeyard is not root it cannot
  chown; the command then runs as codeyard's own (non-root) uid instead, which owns the workdir.
- Processes: Docker's init (tini) is pid 1, so signals and exit codes behave as in a shell
  (128+N for signal N) and orphans are reaped.
- Environment: PATH, HOME=/tmp, TMPDIR=/tmp, LANG=C.UTF-8, plus what the caller passes.

Limits (`Limits`):

- wall time: enforced here by killing the container (SIGKILL: exit 137), which takes every
  process of its pid namespace with it. The container is always removed afterwards, also when
  the run fails or is cancelled. A container must not outlive a codeyard that dies mid-run
  (SIGKILL, out of memory), so it also keeps a deadline of its own: the image's coreutils
  `timeout` starts the command and SIGKILLs it `DEADLINE_GRACE` seconds after the wall time
  (codeyard's own kill comes first and reports `timed_out`; a run that the container's deadline
  stopped first, on a stalled machine, is reported as timed out all the same). Each container
  is labelled with its wall-time deadline (`DEADLINE_LABEL`, epoch seconds), and every
  codeyard using the engine removes, running or not, the sandbox containers more than
  `SWEEP_GRACE` seconds past theirs (at its probe and then at most once a minute, before a
  run): that covers a container whose own deadline did not fire. Stopped ones of a codeyard
  that died are removed at the probe whatever their deadline.
- memory: each process may have at most `memory_bytes` of address space (RLIMIT_AS, as under
  bwrap: allocations fail with MemoryError), and the container as a whole, /tmp and /dev/shm
  included, at most `memory_bytes + 2 * tmpfs_bytes` of RAM with no swap (the cgroup OOM
  killer enforces it; `killed_by_limit="memory"` when it struck). RLIMIT_AS is set by the
  image's `prlimit` just before it execs the command (`codeyard.sandbox.rlimit_shim`), not as
  a Docker ulimit: those apply to the runtime's own setup (runc, a Go program) too, which then
  fails to start the container under a small limit. An engine that gives containers a lower
  hard RLIMIT_AS than asked makes prlimit fail the run (exit 1, "failed to set the AS resource
  limit") rather than run it under another limit.
- CPU: RLIMIT_CPU (`cpu_seconds`) per process and at most `cpus` cores for the container.
- processes: `pids_limit` (a cgroup: works whatever the uid); file size: RLIMIT_FSIZE; no core
  dumps.
- open files: RLIMIT_NOFILE, set by the image's `prlimit` only, like RLIMIT_AS, so that the
  runtime's own setup (runc, the init) is not bound by it. Lowering the engine's limit needs
  no privilege; an engine whose hard limit is below `open_files` makes prlimit fail the run
  (exit 1, "failed to set the NOFILE resource limit").
- output: streamed from the container as it runs (the engine keeps no log: `log_config=none`),
  kept as a bounded tail.
- disk and host state: the disk guard (`codeyard.sandbox.disk_guard`) as with every backend,
  and the bwrap backend's seccomp filter (`codeyard.sandbox.seccomp`: it refuses preallocation,
  which reserves GiBs between two polls of the guard, and setuid bits), on top of Docker's
  default filter. Docker
  takes only its own JSON profiles, so the image's python3 installs it just before prlimit
  (about 10 ms a run); a container where it cannot be installed runs nothing (exit 126).

The image must provide /usr/bin/python3 (as `python` too), pytest, /usr/bin/prlimit and
/usr/bin/setpriv (util-linux, essential in Debian), /usr/bin/timeout (coreutils, essential too)
and /bin/sh (test commands run with `/bin/sh -c`; dash is essential in Debian too);
scripts/build-sandbox-image.sh builds the default one, `codeyard-sandbox:bookworm`, with no
registry. The docker SDK blocks, so every call runs in a thread: the event loop never waits on
the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
import docker.errors
from docker.api.client import APIClient
from docker.types import LogConfig, Mount, Ulimit

from codeyard.observability.sandbox_runs import counted
from codeyard.sandbox.container_execution import (
    ENGINE_ERRORS,
    ENGINE_TIMEOUT,
    ContainerExecution,
    remove_container,
)
from codeyard.sandbox.limits import Limits
from codeyard.sandbox.protocol import (
    SANDBOX_UID,
    SANDBOX_WORKDIR,
    SHELL,
    RunOutcome,
    SandboxUnavailable,
    checked_request,
    shell_command,
)
from codeyard.sandbox.rlimit_shim import NO_LIMIT, shim_argv
from codeyard.sandbox.seccomp import NOT_INSTALLED, installing_argv, sandbox_filter
from codeyard.sandbox.supervision import supervise
from codeyard.sandbox.workdir import checked_workdir, git_metadata
from codeyard.sandbox.workdir_loan import WorkdirLoan

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "codeyard-sandbox:bookworm"
# Where scripts/docker-engine.sh starts its engine; found without any configuration.
CODEYARD_DOCKER_SOCKET = Path("/run/codeyard-docker/docker.sock")
DOCKER_DEFAULT_HOST = "unix:///var/run/docker.sock"
ENGINE_HINT = (
    "start one with `sudo scripts/docker-engine.sh` (it installs docker.io if needed and "
    f"listens on {CODEYARD_DOCKER_SOCKET}), or point CODEYARD_DOCKER_HOST at a running engine"
)
IMAGE_HINT = "build it with `sudo scripts/build-sandbox-image.sh` (no registry needed)"
LABEL = "codeyard.sandbox"
# When the run's wall time ends, in seconds since the epoch (as text: labels are strings).
DEADLINE_LABEL = "codeyard.sandbox.deadline"
# How long after the wall time the container's own `timeout` kills the command: codeyard's
# kill must come first (its timer starts a little after the container, and a loaded machine
# may delay it), so that the run is reported as timed out the usual way.
DEADLINE_GRACE = 10.0
# How long after its deadline label a container is removed by any codeyard: beyond what its
# own codeyard may still take to start it (attach, start), kill it and remove it, so no run
# that is still supervised loses its container.
SWEEP_GRACE = DEADLINE_GRACE + 3 * ENGINE_TIMEOUT
_SWEEP_INTERVAL = 60.0  # seconds between two sweeps of overdue containers while runs go on

# docker-init (tini) and `timeout` count against the container's pids limit
_WRAPPER_PIDS = 2
_PRLIMIT = "/usr/bin/prlimit"  # of the image
_TIMEOUT = "/usr/bin/timeout"  # of the image (coreutils)
_SETPRIV = "/usr/bin/setpriv"  # of the image (util-linux)
_KILLED = 128 + 9  # SIGKILL, as a shell reports it
# Installs the seccomp filter. A path, never looked up: a caller's PATH could name the workdir.
_PYTHON = "/usr/bin/python3"


def resolve_docker_host(configured: str = "") -> str:
    """The engine to use: `configured`, else DOCKER_HOST, else codeyard's own engine
    (scripts/docker-engine.sh) when its socket exists, else Docker's default socket."""
    if configured:
        return configured
    if from_env := os.environ.get("DOCKER_HOST"):
        return from_env
    if CODEYARD_DOCKER_SOCKET.is_socket():
        return f"unix://{CODEYARD_DOCKER_SOCKET}"
    return DOCKER_DEFAULT_HOST


class DockerSandbox:
    """The Docker backend of `Sandbox` (see the module docstring for what it enforces).

    `docker_host` defaults to `resolve_docker_host()`; `image` must hold python3 and pytest;
    `cpus` is how many cores one run may use at most.
    """

    name = "docker"

    def __init__(
        self, docker_host: str = "", image: str = DEFAULT_IMAGE, cpus: float = 1.0
    ) -> None:
        if cpus <= 0:
            raise ValueError(f"cpus must be positive, got {cpus!r}")
        self.docker_host = resolve_docker_host(docker_host)
        self.image = image
        self.cpus = cpus
        self._client: docker.DockerClient | None = None
        self._probe_lock = threading.Lock()
        self._seccomp = b""  # the BPF program of `sandbox_filter`, after `probe()`
        self._swept = 0.0  # time.monotonic() of the last sweep

    @property
    def client(self) -> docker.DockerClient:
        """The engine's client (after a successful `probe()`)."""
        if self._client is None:
            raise RuntimeError("DockerSandbox.probe() has not succeeded yet")
        return self._client

    def probe(self) -> None:
        """Checks that the engine answers, the image exists and a container of this sandbox
        runs python3; raises `SandboxUnavailable` saying what to do if not.

        Blocking; `run` calls it in a thread. Success is remembered, a failure is not (an
        engine started later is found by the next call).
        """
        with self._probe_lock:
            if self._client is not None:
                return
            self._seccomp = sandbox_filter()
            client = self._connect()
            try:
                self._check_image(client)
                self._sweep(client)
                self._check_run(client)
            except BaseException:
                client.close()
                raise
            self._client = client
            log.info("docker sandbox ready (engine %s, image %s)", self.docker_host, self.image)

    def _connect(self) -> docker.DockerClient:
        try:
            client = docker.DockerClient(base_url=self.docker_host, timeout=ENGINE_TIMEOUT)
            client.ping()
        except ENGINE_ERRORS as exc:
            raise SandboxUnavailable(
                f"no Docker engine answers at {self.docker_host} ({exc}): {ENGINE_HINT}"
            ) from exc
        return client

    def _check_image(self, client: docker.DockerClient) -> None:
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound as exc:
            raise SandboxUnavailable(
                f"the sandbox image {self.image} is not in the Docker engine at "
                f"{self.docker_host}: {IMAGE_HINT}"
            ) from exc
        except ENGINE_ERRORS as exc:
            raise SandboxUnavailable(
                f"cannot inspect the sandbox image {self.image} at {self.docker_host}: {exc}"
            ) from exc

    def _sweep(self, client: docker.DockerClient, stopped: bool = True) -> None:
        """Removes the sandbox containers more than `SWEEP_GRACE` seconds past their deadline,
        running or not (their codeyard died, and their own deadline did not stop them), and,
        with `stopped`, every stopped one (of a codeyard that died mid-run). A running container
        within its deadline is left alone: another codeyard process may own it."""
        self._swept = time.monotonic()
        now = time.time()
        for container in client.api.containers(all=True, filters={"label": LABEL}):
            labels = container.get("Labels") or {}
            overdue = _deadline(labels.get(DEADLINE_LABEL)) + SWEEP_GRACE < now
            if overdue or (stopped and container.get("State") in ("exited", "dead")):
                with contextlib.suppress(*ENGINE_ERRORS):
                    client.api.remove_container(container["Id"], force=True)

    def _check_run(self, client: docker.DockerClient) -> None:
        command = shell_command("python -c 'import pytest'")  # as test commands run
        with tempfile.TemporaryDirectory(prefix="codeyard-probe-") as tmp:
            workdir = Path(tmp)
            loan = self._loan(workdir)
            container_id: str | None = None
            try:
                container_id = self._create(client.api, workdir, command, Limits(), None)
                client.api.start(container_id)
                status = int(client.api.wait(container_id, timeout=ENGINE_TIMEOUT)["StatusCode"])
            except ENGINE_ERRORS as exc:
                raise SandboxUnavailable(
                    f"the Docker engine at {self.docker_host} cannot run a sandbox container "
                    f"of {self.image}: {exc}"
                ) from exc
            finally:
                _discard(client.api, container_id, loan)
        if status == NOT_INSTALLED:
            raise SandboxUnavailable(
                f"the sandbox's seccomp filter cannot be installed in containers of {self.image} "
                f"at {self.docker_host} (exit {status}): the image's {_PYTHON} installs it "
                "with prctl(PR_SET_SECCOMP), which the engine's own filter must allow"
            )
        if status != 0:
            raise SandboxUnavailable(
                f"`{SHELL} -c \"python -c 'import pytest'\"` fails in the sandbox image "
                f"{self.image} (exit {status}): the image needs {SHELL}, /usr/bin/python3 (as "
                f"`python` too), pytest, prlimit, setpriv and timeout; {IMAGE_HINT}"
            )

    async def run(
        self,
        workdir: Path,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome:
        arguments = checked_request(command, env)
        # counted whole: a run whose container the engine could not create is an `error` too
        return await counted(self.name, self._run(workdir, arguments, limits, env))

    async def _run(
        self,
        workdir: Path,
        arguments: list[str],
        limits: Limits,
        env: Mapping[str, str] | None,
    ) -> RunOutcome:
        if self._client is None:
            await asyncio.to_thread(self.probe)
        elif time.monotonic() - self._swept > _SWEEP_INTERVAL:
            self._swept = time.monotonic()  # one sweep at a time
            with contextlib.suppress(*ENGINE_ERRORS):
                await asyncio.to_thread(self._sweep, self.client, False)
        workdir = checked_workdir(workdir)
        api = self.client.api
        loan = await asyncio.to_thread(self._loan, workdir)
        # Shielded: a run cancelled while the engine creates its container still learns its id,
        # to remove it (left in the `created` state, it waited for an overdue sweep).
        creating = asyncio.ensure_future(
            asyncio.to_thread(self._create, api, workdir, arguments, limits, env)
        )
        try:
            execution = ContainerExecution(api, await asyncio.shield(creating), limits)
            return await self._supervise(execution, limits, workdir)
        except ENGINE_ERRORS as exc:
            raise SandboxUnavailable(
                f"the Docker engine at {self.docker_host} failed to run a sandbox container: {exc}"
            ) from exc
        finally:
            # Shielded: a cancelled run still removes its container and gives the workdir back.
            await asyncio.shield(_discard_when_created(api, creating, loan))

    async def _supervise(
        self, execution: ContainerExecution, limits: Limits, workdir: Path
    ) -> RunOutcome:
        await execution.start()
        outcome = await supervise(execution, limits, workdir)
        if (
            not outcome.timed_out
            and outcome.killed_by_limit != "disk"
            and outcome.exit_code == _KILLED
            and outcome.duration_seconds >= limits.wall_seconds + DEADLINE_GRACE
        ):
            # The container's own deadline struck before codeyard's kill (a stalled machine):
            # it is the wall time all the same.
            return dataclasses.replace(outcome, timed_out=True, killed_by_limit="wall_time")
        # Only the engine knows whether its OOM killer struck, also at a child of a command
        # that then ended well: one inspection per run.
        if not outcome.timed_out and await asyncio.to_thread(execution.oom_killed):
            return dataclasses.replace(outcome, killed_by_limit="memory")
        return outcome

    def _loan(self, workdir: Path) -> WorkdirLoan | None:
        """Lends `workdir` to the sandbox user when we can (root); None when we run as the
        caller's own uid instead (see the module doc)."""
        if os.geteuid() != 0:
            return None
        loan = WorkdirLoan(workdir)
        loan.lend()
        return loan

    def _create(
        self,
        api: APIClient,
        workdir: Path,
        command: list[str],
        limits: Limits,
        env: Mapping[str, str] | None,
    ) -> str:
        """Creates the run's container (blocking); its id."""
        user = SANDBOX_UID if os.geteuid() == 0 else os.getuid()
        group = SANDBOX_UID if os.geteuid() == 0 else os.getgid()
        environment = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "USER": "nobody",
            "LOGNAME": "nobody",
        }
        environment.update(env or {})
        memory = limits.memory_bytes + 2 * limits.tmpfs_bytes
        mounts = [Mount(SANDBOX_WORKDIR, str(workdir), type="bind", read_only=False)]
        metadata = git_metadata(workdir)
        if metadata is not None:
            mounts.append(Mount(f"{SANDBOX_WORKDIR}/.git", str(metadata), "bind", read_only=True))
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            cap_add=["SETUID", "SETGID", "SETPCAP"],
            security_opt=["no-new-privileges"],
            init=True,
            mounts=mounts,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_bytes},mode=1777"},
            shm_size=limits.tmpfs_bytes,
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(self.cpus * 1e9),
            pids_limit=limits.pids + _WRAPPER_PIDS,
            ulimits=[
                Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
                Ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes),
                Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=LogConfig(type="none"),
        )
        # No ceilings: Docker's `ulimits` above are the CPU and file size limits asked for, and
        # the engine's RLIMIT_AS and RLIMIT_NOFILE are not known here (see the module doc).
        argv = shim_argv(_PRLIMIT, limits, NO_LIMIT, command, ceilings={})
        argv = installing_argv(_PYTHON, self._seccomp, argv)
        # The container starts as root, so that its init and its deadline (`timeout`) belong
        # to a user the command cannot signal: run as the command's user, a SIGSTOP to
        # `timeout` kept a container running for ever after its codeyard died. Root there has
        # only the capabilities setpriv needs to become the command's user, which it does
        # with no capability and an empty bounding set left.
        dropping = [f"--reuid={user}", f"--regid={group}", "--clear-groups"]
        argv = [_SETPRIV, *dropping, "--inh-caps=-all", "--bounding-set=-all", *argv]
        # The container's own deadline, in case codeyard dies before it kills it (module doc).
        # Outermost, so that the command's rlimits and seccomp filter do not bind it.
        argv = [_TIMEOUT, "-s", "KILL", f"{limits.wall_seconds + DEADLINE_GRACE:.3f}", *argv]
        deadline = time.time() + limits.wall_seconds
        created = api.create_container(
            self.image,
            argv,
            name=f"codeyard-sandbox-{uuid.uuid4().hex[:16]}",
            labels={LABEL: "1", DEADLINE_LABEL: f"{deadline:.0f}"},
            hostname="sandbox",
            user="0:0",
            working_dir=SANDBOX_WORKDIR,
            environment=environment,
            stdin_open=False,
            tty=False,
            host_config=host_config,
            use_config_proxy=False,  # nothing of the client's configuration goes in
        )
        return str(created["Id"])


async def _discard_when_created(
    api: APIClient, creating: asyncio.Future[str], loan: WorkdirLoan | None
) -> None:
    """`_discard`, once the engine has answered the creation of the container."""
    container_id = None
    with contextlib.suppress(Exception):  # not created: its caller was told why
        container_id = await creating
    await asyncio.to_thread(_discard, api, container_id, loan)


def _discard(api: APIClient, container_id: str | None, loan: WorkdirLoan | None) -> None:
    """Removes the container (killing what is left of it) and gives the workdir back, only
    once the container is known to be gone.

    Giving back walks the workdir as root, chowning by path. While the command may still run
    it could swap a directory for a symlink between the walk's look and its chown and have a
    file outside the workdir chowned to the caller (lchown does not follow the last symlink,
    but every component before it is followed). So when the engine could not remove the
    container, the workdir stays lent to the sandbox user (the caller, root, can still read and
    delete it) rather than be walked.
    """
    removed = container_id is None  # stays False if removing it raises
    try:
        if container_id is not None:
            removed = remove_container(api, container_id)
    finally:
        if loan is not None:
            if removed:
                loan.give_back()
            else:
                log.error(
                    "sandbox container %s may still run: its workdir %s stays owned by uid "
                    "%d instead of being given back",
                    container_id,
                    loan.workdir,
                    SANDBOX_UID,
                )


def _deadline(label: str | None) -> float:
    """The deadline a container's `DEADLINE_LABEL` says; none (infinity) for a container
    without one (of an older codeyard) or with a label that is not a number."""
    try:
        return float(label) if label is not None else float("inf")
    except ValueError:
        return float("inf")
