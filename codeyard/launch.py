"""`codeyard up`: NATS (embedded unless NATS_URL is set) and every service as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import site
import socket
import sys
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from rich.console import Console

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.connection import LOGIN_HINT, LoginRefused
from codeyard.bus.credentials import (
    SERVICE_KEY_VARIABLE,
    Credentials,
    credentials_file,
    read_credentials,
    shown_url,
)
from codeyard.bus.embedded import EmbeddedServerError, free_port
from codeyard.bus.permissions import (
    COORDINATOR,
    CTL,
    GATE,
    SERVICE_ACCOUNT,
    principal_of_role,
    principals,
)
from codeyard.bus.service_key import ServiceKey
from codeyard.bus.topology import Topology
from codeyard.cancellation import stop_tasks, wait_event
from codeyard.config import Settings
from codeyard.dashboard.auth import new_token
from codeyard.deploy.nats_config import (
    Deployment,
    ServerOptions,
    adopt_global_store,
    write_deployment,
)
from codeyard.llm.local import MAX_TOKENS, local_server_command, smollm2_model
from codeyard.observability.ports import metrics_port_of, with_metrics_ports
from codeyard.observability.startup import start_observability
from codeyard.supervisor import BAD_CONFIGURATION, ChildSpec, ChildState, Supervisor

if TYPE_CHECKING:
    from codeyard.bus.worker import Handler
    from codeyard.reviewers.protocol import ReviewerPlugin

log = logging.getLogger(__name__)


def service_children(
    url: str,
    *,
    coders: int,
    agents: bool,
    llm_env: Mapping[str, str] | None = None,
    credentials: Mapping[str, Credentials] | None = None,
    reviewers: Sequence[str] = (),
    dashboard_token: str | None = None,
    dashboard_token_made: bool = False,
    policy: Path | None = None,
    max_in_flight: int | None = None,
) -> list[ChildSpec]:
    """The services `up` keeps running: the coordinator and the safety gate (merges wait for
    it), with `agents` every role, a worker per reviewer plugin named in `reviewers` (by entry
    point; they need no LLM), and with a `dashboard_token` the web dashboard (as `ctl`; with
    its sign-in link printed if `up` made the token, `dashboard_token_made`). Each
    gets its own principal's `credentials` (if given) and no other's. The gate applies
    `policy` (a TOML file; default: the built-in policy). The coordinator caps the tasks of
    all runs in flight at `max_in_flight`, if given."""
    base = own_import_path(os.environ) | {"NATS_URL": url} | dict(llm_env or {})
    credentials = credentials or {}

    def env(principal: str) -> dict[str, str]:
        own = credentials.get(principal)
        return base | own.as_env() if own else base

    codeyard = [*PYTHON, "-m", "codeyard"]
    coordinator = [*codeyard, "coordinator", "--name", "coordinator"]
    if max_in_flight is not None:
        coordinator += ["--max-in-flight", str(max_in_flight)]
    children = [
        ChildSpec("coordinator", coordinator, env(COORDINATOR)),
        ChildSpec(
            "safety-gate",
            [*codeyard, "gate", *(["--policy", str(policy.resolve())] if policy else [])],
            env(GATE),
            stops_last=True,  # the workers finishing their work in flight ask it
        ),
    ]
    if dashboard_token is not None:  # "": the dashboard makes one, and shows it
        dashboard_env = env(CTL)
        if dashboard_token:
            dashboard_env |= {"CODEYARD_DASHBOARD_TOKEN": dashboard_token}
        show = ["--show-token-link"] if dashboard_token_made else []
        children.append(ChildSpec("dashboard", [*codeyard, "dashboard", *show], dashboard_env))
    if agents:
        coder, tester, review = (principal_of_role(r) for r in ("coder", "tester", "review"))
        children += [
            ChildSpec("planner", [*codeyard, "worker", "planner"], env("planner")),
            *(
                ChildSpec(f"coder-{n}", [*codeyard, "worker", "coder"], env(coder))
                for n in range(coders)
            ),
            ChildSpec("tester", [*codeyard, "worker", "tester", "--concurrency", "2"], env(tester)),
            ChildSpec("review", [*codeyard, "worker", "review", "--concurrency", "2"], env(review)),
        ]
    for name in reviewers:
        plugin = [*codeyard, "worker", "review", "--name", name]
        children.append(ChildSpec(f"review-{name}", plugin, env(plugin_principal(name))))
    return children


# `-P`: plain `python -m` puts the working directory first on sys.path, where a folder named
# `codeyard` (the one a user cloned into, say) hides the installed package from every child.
PYTHON = (sys.executable, "-P")


def own_import_path(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with PYTHONPATH leading first to the codeyard this process runs, when that one is
    not installed but found on sys.path (a source tree run as `python -m codeyard` from its
    root, or with PYTHONPATH): `-P` would lose it. An installed one is left where it is, as
    putting site-packages on PYTHONPATH would rank it above the standard library."""
    root = Path(__file__).resolve().parent.parent  # the folder holding this package
    on_path = {Path(entry or ".").resolve() for entry in sys.path}
    installed = {Path(d).resolve() for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in on_path or root in installed:
        return dict(env)
    rest = env.get("PYTHONPATH")
    return dict(env) | {"PYTHONPATH": f"{root}{os.pathsep}{rest}" if rest else str(root)}


def plugin_principal(name: str) -> str:
    return principal_of_role(f"review.{name}")


def embedded_deployment(settings: Settings, port: int, reviewers: Sequence[str] = ()) -> Deployment:
    """The embedded server's users under the data dir: generated on the first `up`, the same
    passwords on every later one (so a restarted `up` and its CLI keep working)."""
    directory = settings.embedded_dir()
    store = directory / "jetstream"
    options = ServerOptions(port=port, store_dir=store, server_name=f"codeyard-{port}")
    # (the server is not running: an `up` of before accounts left its streams in `$G`)
    if adopt_global_store(store):
        log.info("moved the embedded server's streams to account %s", SERVICE_ACCOUNT)
    return write_deployment(directory, reviewers=reviewers, options=options, accounts=True)


def principal_credentials(directory: Path, reviewers: Sequence[str] = ()) -> dict[str, Credentials]:
    """Every principal's credentials found in `directory` (builtin, and the plugin reviewers
    named in `reviewers`)."""
    found = {
        p: read_credentials(credentials_file(directory, p)) for p in principals(tuple(reviewers))
    }
    return {principal: creds for principal, creds in found.items() if creds is not None}


async def run_gate(settings: Settings, policy_file: Path | None) -> None:
    """The safety gate process: answer checks until SIGTERM."""
    from codeyard.agents.policy import load_policy
    from codeyard.agents.safety_gate import SafetyGate

    policy = load_policy(policy_file)
    start_observability(settings, "safety-gate")
    credentials = settings.credentials(GATE)
    service_key = service_key_of(credentials)
    bus = await Bus.connect(
        settings.server_url(),
        name="safety-gate",
        credentials=credentials,
        topology=settings.topology(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await SafetyGate(bus, policy, service_key=service_key).serve()
        what = policy_file or "the built-in policy"
        log.info("serving cy.gate.check with %s from %s", what, shown_url(settings.server_url()))
        await stop.wait()
    finally:
        await bus.close()


async def serve_role(
    settings: Settings,
    role: str,
    make_handler: Callable[[Bus], Handler],
    concurrency: int,
    *,
    skip_ended_runs: bool = False,
) -> None:
    """One role's worker process: serve until SIGTERM, then finish or hand back in-flight work.
    `skip_ended_runs`: see `PullWorker`."""
    from codeyard.agents.working_copy import WORKING_COPY_SCRATCH
    from codeyard.bus import PullWorker
    from codeyard.sandbox.scratch import sweep_abandoned
    from codeyard.workspace.cache_pruning import prune_periodically
    from codeyard.workspace.repo_localizer import RepoLocalizer
    from codeyard.workspace.snapshot_cache import SnapshotCache
    from codeyard.workspace.snapshots import artifact_store

    url = settings.server_url()
    prepare_data_dir(settings)  # (its snapshot cache)
    start_observability(settings, f"worker-{role}")
    with configuring():
        credentials = settings.credentials(principal_of_role(role))
    bus = await Bus.connect(
        url, name=f"worker-{role}", credentials=credentials, topology=settings.topology()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    pruning: asyncio.Task[None] | None = None
    try:
        await sweep_abandoned(WORKING_COPY_SCRATCH)  # of workers killed on this machine
        cache = SnapshotCache(await artifact_store(bus.js), settings.snapshot_cache_dir())
        pruning = asyncio.create_task(prune_periodically(cache.root, settings.artifact_retention()))
        with configuring():
            handler = RepoLocalizer(make_handler(bus), cache)
            worker = PullWorker(
                bus, role, handler, concurrency=concurrency, skip_ended_runs=skip_ended_runs
            )
        log.info("serving %s (%d at once) from %s", role, concurrency, shown_url(url))
        await worker.run(stop)
    finally:
        if pruning is not None:
            pruning.cancel()
        await bus.close()


async def run_worker(settings: Settings, role: str, concurrency: int) -> None:
    """A built-in agent role, which thinks with the configured LLM."""
    from codeyard.agents.roles import role_handler
    from codeyard.bus.gate_client import BusGateClient
    from codeyard.llm import LLMSettings, OpenAIClient

    with configuring():
        llm = OpenAIClient(LLMSettings())
    try:
        # Each item costs LLM calls (the tester's, a sandbox run too): a KV read per item to
        # skip the work of ended runs is cheap beside them.
        await serve_role(
            settings,
            role,
            lambda bus: role_handler(role, llm, BusGateClient(bus)),
            concurrency,
            skip_ended_runs=True,
        )
    finally:
        await llm.close()


async def run_plugin_reviewer(
    settings: Settings, role: str, plugin: ReviewerPlugin, concurrency: int
) -> None:
    """A reviewer plugin serving `role` (`review.<name>`); it needs no LLM."""
    from codeyard.reviewers.handler import PluginHandler

    # A plain `def review` runs in the loop's default threads, min(32, CPUs + 4) of them: on
    # two cores, --concurrency 12 reviewed 6 at a time. Room for each review, and for the
    # worker's own work in threads (checkouts) beside them.
    threads = ThreadPoolExecutor(concurrency + 8, thread_name_prefix="review")
    asyncio.get_running_loop().set_default_executor(threads)
    await serve_role(settings, role, lambda _: PluginHandler(plugin, role), concurrency)


class BadConfiguration(Exception):
    """A worker's setting was refused while it started (a role, a principal, an LLM setting):
    it exits with BAD_CONFIGURATION, which `up` does not restart. A `ValueError` once it
    serves is a fault like any other (exit 1, restarted). `problems`: what is wrong, one line
    each (the CLI prints each after `error:`)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def service_key_of(credentials: Credentials | None) -> ServiceKey | None:
    """The key among a coordinator's or the gate's credentials (CODEYARD_SERVICE_KEY, or in
    its env file); none without one, which is warned about when NATS has users: their
    permissions alone let a worker answer work it was not given, or approve its own merge."""
    key = credentials.service_key if credentials else ""
    if not key:
        if credentials is not None:
            log.warning(
                "no %s: answers are not checked to answer work the coordinator sent, nor "
                "approvals to be a person's (a worker could pass its own task's review, or "
                "approve its own merge); `codeyard deploy nats-config` adds one to the "
                "coordinator's and the gate's credentials",
                SERVICE_KEY_VARIABLE,
            )
        return None
    try:
        return ServiceKey(key)
    except ValueError as exc:
        raise BadConfiguration(f"{SERVICE_KEY_VARIABLE}: {exc}") from None


def prepare_data_dir(settings: Settings) -> None:
    """Make CODEYARD_DATA_DIR if it is not there; `BadConfiguration` naming it if it cannot be
    used (a file, not writable): the operating system's message alone named no setting, and a
    coordinator failed every run's clone with it while it served."""
    directory = settings.data_dir
    try:
        if directory.exists() and not directory.is_dir():  # (mkdir would say "File exists")
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        raise BadConfiguration(
            f"CODEYARD_DATA_DIR: cannot use {directory}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def configuring() -> Iterator[None]:
    """Where a worker reads its settings: a `ValueError` raised there is `BadConfiguration`.
    A setting of the environment refused (pydantic's `ValidationError`) is said as every
    command says it: one line per variable, naming it, not pydantic's report."""
    from pydantic import ValidationError

    from codeyard.config import invalid_settings

    try:
        yield
    except ValidationError as exc:
        raise BadConfiguration(*(invalid_settings(exc) or [str(exc)])) from exc
    except ValueError as exc:
        raise BadConfiguration(str(exc)) from exc


class LocalModelNotServing(Exception):
    """The local model server did not answer in time. Not a TimeoutError, which is an OSError:
    `codeyard up` reports those as NATS being unreachable."""


class NatsUnreachable(Exception):
    """`codeyard up` could not connect to NATS, or prepare its streams and buckets there."""

    def __init__(self, url: str, cause: Exception) -> None:
        url = shown_url(url)
        if isinstance(cause, LoginRefused):  # there, but not for us
            super().__init__(f"{cause}. {LOGIN_HINT}")
        elif isinstance(cause, nats.js.errors.APIError):  # there, and refusing
            refused = (
                f"NATS at {url} refused to set up codeyard's streams and buckets: "
                f"{cause.description} (JetStream error {cause.err_code})"
            )
            if cause.err_code == NO_STORAGE:
                refused += (
                    ": the events stream keeps up to 1 GiB, and an embedded server takes at "
                    "most 75 % of the free space where the data dir is; free some there, or "
                    "choose a data dir on a larger disk (CODEYARD_DATA_DIR)"
                )
            super().__init__(refused)
        else:
            super().__init__(f"cannot reach NATS at {url}: {nats_error_text(cause)}")


# JetStream's error code for a stream whose limits the server's storage cannot hold.
NO_STORAGE = 10047


def nats_error_text(exc: BaseException) -> str:
    """What a NATS error says: nats-py's errors have an empty repr (`ServerError()`), their
    text is in str(); others are shown with their type."""
    return str(exc) if isinstance(exc, nats.errors.Error) and str(exc) else repr(exc)


class AlreadyRunning(Exception):
    """Another `up` uses the data dir, or something else listens on the NATS port: found
    before `up` writes there or starts a server, which would open a running server's store."""


class ServiceRefused(Exception):
    """A service exited with BAD_CONFIGURATION (a bad setting, no sandbox: restarting it
    would not help), so `up` stopped everything, and exits with that status too."""

    def __init__(self, child: ChildState) -> None:
        super().__init__(child.spec.name)
        self.service = child.spec.name
        self.last_lines = tuple(child.last_lines)

    def __str__(self) -> str:
        said = "".join(f"\n  {line}" for line in self.last_lines) or " (none)"
        return (
            f"{self.service} refused to start (it exited with {BAD_CONFIGURATION}: bad "
            f"configuration), so up stopped everything. Its last lines on stderr:{said}"
        )


# Held (flock) by the `up` that runs the embedded server of a data dir, for as long as it runs;
# the kernel lets go of it when that process ends, however it ends.
UP_LOCK = "up.lock"


def up_holding(directory: Path) -> int | None:
    """The pid of the `up` that holds `directory` (the embedded server's), or None when none
    runs. The lock, not the pid, tells: the kernel drops it when that `up` ends, so a stale
    pid of a process long gone (or of another process since) is never taken for it."""
    try:
        lock = open(directory / UP_LOCK, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock.read().strip()
            return int(pid) if pid.isdigit() else 0
        return None


async def stop_up(directory: Path, patience: float) -> int | None:
    """Stop the `up` that holds `directory` as Ctrl-C does (SIGTERM: its services, then NATS)
    and wait until it has; its pid, or None when none ran. `TimeoutError` after `patience`
    seconds."""
    async with asyncio.timeout(patience):
        pid = up_holding(directory)
        while pid == 0:  # locked, its pid not written yet: it is starting
            await asyncio.sleep(0.05)
            pid = up_holding(directory)
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):  # (it ended meanwhile)
            os.kill(pid, signal.SIGTERM)
        # (a lock another process holds: nothing tells when it goes but looking; a thread
        # blocked on it could not be given up at the timeout)
        while up_holding(directory) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return pid


def hold_data_dir(directory: Path) -> IO[str]:
    """Lock `directory` (the embedded server's) for this `up`; keep the returned file open to
    keep it. `AlreadyRunning` if another `up` holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    # not `with`: the lock is held until the caller closes the file
    lock = open(directory / UP_LOCK, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(
            f"another codeyard up (pid {holder}) runs the NATS server of {directory}: stop it "
            "first, or give this one a CODEYARD_DATA_DIR of its own"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


IN_USE = "in use"


def bind_problem(port: int, host: str = "127.0.0.1") -> str:
    """Why a server could not listen on `host`:`port` now (`IN_USE`: something listens there),
    or "" when it could. Every address `host` names, IPv6 too, as servers bind them;
    SO_REUSEADDR as they do: connections of a stopped server lingering in TIME_WAIT do not
    count."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"no address of that name ({exc.strerror})"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return IN_USE if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return ""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `port`."""
    return not bind_problem(port, host)


def ensure_port_free(port: int, host: str = "127.0.0.1") -> None:
    """`AlreadyRunning` if something listens on `port`."""
    if not port_free(port, host):
        raise AlreadyRunning(
            f"port {port} on {host} is in use (another codeyard up, or another program): "
            "stop it, or set CODEYARD_NATS_PORT to a free port"
        )


# How long `up` waits for the local model to answer: loading it can take minutes on a slow disk.
LOCAL_MODEL_PATIENCE = 300.0

# What stops `up`. SIGHUP too: its children are in sessions of their own, so when its terminal
# goes away only `up` hears it, and it must stop them rather than die and leave them running.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def wait_until_serving(
    url: str,
    timeout: float,
    stop: asyncio.Event | None = None,
    ended: Callable[[], bool] = lambda: False,
) -> bool:
    """Poll an HTTP endpoint until it answers 200 (True), or `stop` is set (False, within a
    poll: at most about 2.5 s); `LocalModelNotServing` after `timeout` seconds, or as soon as
    `ended()` says what should answer is gone for good."""
    stop = stop or asyncio.Event()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(answers):
        if stop.is_set():
            return False
        if loop.time() > deadline:
            raise LocalModelNotServing(f"{url} did not answer within {timeout:.0f}s")
        if ended():
            raise LocalModelNotServing(f"the server of {url} ended before it answered")
        if await wait_event(stop, 0.5):
            return False
    return True


async def prepare_bus(url: str, credentials: Credentials | None, topology: Topology) -> None:
    """Create or update the streams, consumers and buckets; `NatsUnreachable` if NATS is not
    there (or refuses)."""
    try:
        bus = await Bus.connect(url, name="codeyard-up", credentials=credentials, topology=topology)
        try:
            await bus.setup()
        finally:
            await bus.close()
    except (OSError, nats.errors.Error) as exc:
        raise NatsUnreachable(url, exc) from exc


async def unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` to its end (True), or cancel it once `stop` is set (False): connecting to a
    NATS_URL that does not answer takes up to a minute of retries, and a Ctrl-C must not."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop_tasks([stopping, task])  # cancels `task` only if it has not ended
    if task.cancelled():
        return False
    task.result()  # its exception, if it raised one
    return True


async def keep_serving(
    server: EmbeddedNats, *, every: float = 0.5, backoff: float = 0.5, max_backoff: float = 16.0
) -> None:
    """Start `server` again whenever it has exited (killed, out of memory), on its store and
    port, until cancelled: the services reconnect by themselves, and the runs go on from the
    store. It is not one of the supervised children: it starts before them and stops last."""
    delay = backoff
    while True:
        await asyncio.sleep(every)
        if server.running():
            delay = backoff
            continue
        log.error("the embedded nats-server exited: %s; starting it again", server.last_words())
        try:
            await server.start_async()  # on this thread: it is tied to it, as the first was
        except EmbeddedServerError as exc:
            log.error(
                "the embedded nats-server did not start again: %s; trying in %.1fs", exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
        else:
            log.warning("the embedded nats-server runs again at %s", server.url)


async def run_up(
    settings: Settings,
    console: Console,
    *,
    coders: int,
    agents: bool,
    local_llm: bool = False,
    reviewers: Sequence[str] = (),
    reviewer_users: Sequence[str] = (),
    dashboard: bool = False,
    policy: Path | None = None,
    max_in_flight: int | None = None,
) -> None:
    """Start NATS (embedded unless NATS_URL is set), the local model if asked, then every
    service; on SIGINT, SIGTERM or SIGHUP stop them in the reverse order: the services (which
    finish their work in flight over NATS, and may still ask the model), then the model, then
    NATS; a second signal kills the services and the model rather than wait for them. A signal
    during startup stops what has started so far. A service that exits with
    BAD_CONFIGURATION stops them all the same way, then `ServiceRefused`. `reviewer_users`:
    reviewers given a user of the embedded server, and no worker. `policy`: the safety
    gate's."""
    # Before anything starts: until then Python's default action would end `up` without its
    # cleanup, leaving an embedded nats-server running and holding its port.
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: kill what is still stopping

    def on_stop_signal() -> None:
        if stop.is_set() and not hurry.is_set():
            console.print("stopping now: killing the services still stopping")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_stop_signal)
    server: EmbeddedNats | None = None
    keeper: asyncio.Task[None] | None = None
    data_dir_lock: IO[str] | None = None
    model_stop = asyncio.Event()  # the model outlives the services, which may be asking it
    model: asyncio.Task[None] | None = None
    refused: ChildState | None = None
    try:
        url = settings.nats_url
        credentials: dict[str, Credentials] = {}
        if not url:
            port = settings.nats_port or free_port()
            data_dir_lock = hold_data_dir(settings.embedded_dir())
            ensure_port_free(port)
            deployment = embedded_deployment(settings, port, (*reviewers, *reviewer_users))
            credentials = principal_credentials(deployment.credentials_dir, reviewers)
            server = EmbeddedNats(
                settings.embedded_dir(),
                port=port,
                config_file=deployment.config_file,
                tied_to_parent=True,
            )
            # not cancelled by `stop`: the server must be known started (or failed) to be stopped
            await server.start_async()
            keeper = asyncio.create_task(keep_serving(server))
            url = server.url
            console.print(f"embedded nats-server with JetStream at [bold]{url}[/bold]")
            console.print(f"store: {server.store_dir}", markup=False)
            console.print(
                f"one NATS user per role, credentials: {deployment.credentials_dir}", markup=False
            )
            for name in reviewer_users:  # (served by a process of the user's own)
                login = deployment.credentials_file(plugin_principal(name))
                console.print(
                    f"reviewer review.{name} (yours to run) logs in with {login}", markup=False
                )
        elif settings.nats_credentials_dir is not None:
            credentials = principal_credentials(settings.nats_credentials_dir, reviewers)
        own = credentials.get(COORDINATOR) or settings.credentials(COORDINATOR)
        if stop.is_set() or not await unless_stopped(
            stop, prepare_bus(url, own, settings.topology())
        ):
            return
        llm_env: dict[str, str] = {}
        if local_llm:
            path = smollm2_model()
            assert path is not None
            port = free_port()
            # a module of this codeyard, like the services: with its import path
            command = local_server_command(path, port)
            llm_server = ChildSpec("llm", command, own_import_path(os.environ))
            model_supervisor = Supervisor([llm_server])
            model = asyncio.create_task(model_supervisor.run(model_stop, hurry))
            base_url = f"http://127.0.0.1:{port}/v1"
            console.print(f"starting the local model at {base_url} ...")
            try:
                # its supervisor ends only when told to, or when the server exits with 2
                serving = await wait_until_serving(
                    f"{base_url}/models", LOCAL_MODEL_PATIENCE, stop, model.done
                )
            except LocalModelNotServing:
                if (refused := model_supervisor.refused) is not None:
                    raise ServiceRefused(refused) from None
                raise
            if not serving:
                return
            llm_env = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "local"}
            cap = os.environ.get("CODEYARD_LLM_MAX_TOKENS", str(MAX_TOKENS))
            llm_env |= {"CODEYARD_LLM_MODEL": "smollm2", "CODEYARD_LLM_MAX_TOKENS": cap}
            # llama.cpp's server ignores `max_completion_tokens`: the cap would be lost
            llm_env["CODEYARD_LLM_MAX_TOKENS_FIELD"] = "max_tokens"
        # The user's (checked already), or one made here rather than by the dashboard: one for
        # `up`'s lifetime, so that the sign-in link printed goes on working when the dashboard
        # is restarted after a crash.
        token = settings.dashboard_token.get_secret_value() if dashboard else None
        token_made = token == ""
        if token_made:
            token = new_token()
        host, port = settings.dashboard_host, settings.dashboard_port
        problem = bind_problem(port, host) if token is not None else ""
        if problem:
            # it would exit 2 at once: say so, rather than announce an address that is another's
            why = (
                "is in use (set CODEYARD_DASHBOARD_PORT)"
                if problem == IN_USE
                else f"cannot be listened on: {problem} (CODEYARD_DASHBOARD_HOST)"
            )
            console.print(
                f"dashboard not started: {host}:{port} {why}", markup=False, highlight=False
            )
            token = None
        children = service_children(
            url,
            coders=coders,
            agents=agents,
            llm_env=llm_env,
            credentials=credentials,
            reviewers=reviewers,
            dashboard_token=token,
            dashboard_token_made=token_made,
            policy=policy,
            max_in_flight=max_in_flight,
        )
        # (not on NATS's port, nor the dashboard's: see codeyard.observability.ports)
        taken = {settings.dashboard_port, *([server.port] if server else [])}
        children = with_metrics_ports(children, settings.metrics_port, taken)
        if settings.metrics_port:
            where = (f"{c.name} :{metrics_port_of(c)}" for c in children if metrics_port_of(c))
            console.print(f"metrics on {settings.metrics_host}: {', '.join(where)}", markup=False)
        console.print(f"running: {', '.join(child.name for child in children)}; Ctrl-C stops")
        services = Supervisor(children)
        await services.run(stop, hurry)
        refused = services.refused
    finally:
        model_stop.set()
        if model is not None:
            await model
        if keeper is not None:
            await stop_tasks([keeper])
        if server:
            await asyncio.to_thread(server.stop)
            console.print("embedded nats-server stopped")
        if data_dir_lock is not None:
            data_dir_lock.close()  # the server is stopped: another `up` may use its store
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    if refused is not None:  # after everything stopped: the last thing the user reads
        raise ServiceRefused(refused)
