"""Keeps a set of child processes running: `codeyard up` runs every role this way.

A child that exits is started again after a backoff that grows while it keeps crashing and
resets once it has stayed up a while (so is one that could not be started at all: out of file
descriptors, say), unless its first start exited with BAD_CONFIGURATION: starting it again
would only fail the same way, for ever, and the others are no use without it (a coordinator
without a sandbox, a worker with a bad setting), so the supervisor stops them all and `run`
returns with that child in `refused`. A child whose event loop stops turning (it beats in a
file, `codeyard.liveness`) is killed after `hung_after` seconds of silence, and so started
again. Stopping sends SIGTERM to every child, waits for
them to finish their in-flight work, then kills what is left (at once, when stopping is
hurried: a second Ctrl-C); children that `stops_last` get theirs once the others have stopped.

A child's stderr goes through the supervisor, which passes it on to its own as it comes and
keeps its last lines (`ChildState.last_lines`): what a child that refused said last. It is
written from a thread of its own (`StderrEcho`): a stderr that stalls never blocks the event
loop, and what cannot wait is dropped rather than block the children.

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the process
supervising them, which stops them in its own order; and they get SIGTERM from the kernel if
that process dies without stopping them (codeyard.parent_death).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codeyard.cancellation import in_background, stop_tasks, wait_event
from codeyard.liveness import HEARTBEAT_ENV, HUNG_AFTER, beat_time
from codeyard.parent_death import tied_to_this_process

log = logging.getLogger(__name__)

# What `codeyard` service commands exit with on bad configuration (a dashboard token too short,
# a port in use, no sandbox, an unknown role: codeyard.cli._serve).
BAD_CONFIGURATION = 2

# What is kept of a child's stderr: its last lines that are not blank, each cut to so many bytes.
TAIL_LINES = 3
LINE_BYTES = 2000
# How long a child's stderr may stay open after it exited (a process it started holding it)
# before the supervisor stops passing it on.
DRAIN_SECONDS = 2.0
# How long stopping waits for the children before it kills them. A worker given SIGTERM finishes
# its in-flight work for up to its grace (`codeyard.bus.worker.STOP_GRACE`, 30 s), then hands
# the rest back and closes its connection: waiting only as long killed it in that last step,
# and what it was handing back waited for the ack wait instead of being redelivered at once.
STOP_TIMEOUT = 40.0
# How long a child stuck so has to write its stacks (SIGUSR1) before it is killed.
STACKS_SECONDS = 1.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    # Stopped only once the others have stopped: a service they ask while they finish their
    # work in flight (the safety gate, which a tester's command waits for).
    stops_last: bool = False


@dataclass
class ChildState:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    gave_up: bool = False  # exited with BAD_CONFIGURATION: not started again
    starting: asyncio.Task[asyncio.subprocess.Process] | None = None
    # the last lines its latest process wrote to stderr, not blank, each cut to LINE_BYTES
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    passing_on: asyncio.Task[None] | None = None  # its latest process's stderr to ours
    heartbeat: Path | None = None  # where its event loop beats (`codeyard.liveness`)
    hung: int = 0  # how many times it was killed for a loop that had stopped turning


class Supervisor:
    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = STOP_TIMEOUT,
        hung_after: float = HUNG_AFTER,
    ) -> None:
        self.children = {spec.name: ChildState(spec) for spec in children}
        if len(self.children) != len(children):
            raise ValueError("child names must be unique")
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._hung_after = hung_after
        # the first child that exited with BAD_CONFIGURATION, which made run() stop them all
        self.refused: ChildState | None = None
        self._passing_on: set[asyncio.Task[None]] = set()
        self._hurry = asyncio.Event()

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
        """Run every child until `stop` is set or one refuses to run (exits with
        BAD_CONFIGURATION: see `refused`), then stop them all. Once `hurry` is set (a second
        Ctrl-C), those still stopping are killed rather than waited for: their work in flight
        comes back to the queue after the ack wait instead of being handed back."""
        self._hurry = hurry or asyncio.Event()
        heartbeats = Path(tempfile.mkdtemp(prefix="codeyard-heartbeats-"))
        for state in self.children.values():
            state.heartbeat = heartbeats / state.spec.name
        ending = asyncio.Event()  # `stop`, or a child that refused
        keepers = [
            asyncio.create_task(self._keep(state, ending)) for state in self.children.values()
        ]
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(ending.wait())]
        watch = asyncio.create_task(self._watch(ending))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.set()
            await stop_tasks([*waits, watch])
            await self._stop_all()
            await stop_tasks(keepers)
            # A keeper that was starting a child when `stop` came: the first pass could not see
            # the child, and cancelling the keeper does not stop its start (see _start).
            starting = [s.starting for s in self.children.values() if s.starting is not None]
            await asyncio.gather(*starting, return_exceptions=True)
            await self._stop_all()
            # what the children said while stopping, passed on before run() returns
            passing_on = list(self._passing_on)
            if passing_on:
                await asyncio.wait(passing_on, timeout=DRAIN_SECONDS)
            await stop_tasks(passing_on)
            await asyncio.to_thread(STDERR_ECHO.drain, DRAIN_SECONDS)
            shutil.rmtree(heartbeats, ignore_errors=True)

    async def _watch(self, ending: asyncio.Event) -> None:
        """Kill each child whose event loop has stopped beating (its keeper then starts it
        again), once it wrote its threads' stacks to show where it stuck."""
        loop = asyncio.get_running_loop()
        # Each child's last beat as the file's time said it, and when (on our monotonic clock)
        # it was first seen: the wall clock stepped forward is no silence.
        seen: dict[str, tuple[float, float]] = {}
        while not await wait_event(ending, self._hung_after / 6):
            for name, state in self.children.items():
                process, heartbeat = state.process, state.heartbeat
                if process is None or process.returncode is not None or heartbeat is None:
                    continue
                last = beat_time(heartbeat)
                if last is None:  # starting (or not one of codeyard's): not judged
                    seen.pop(name, None)
                    continue
                if seen.get(name, (None,))[0] != last:
                    seen[name] = (last, loop.time())
                    continue
                silence = loop.time() - seen[name][1]
                if silence <= self._hung_after:
                    continue
                del seen[name]
                state.hung += 1
                log.error(
                    "%s (pid %s) has shown no sign of life for %.0f s: its event loop is stuck; "
                    "killing it to start it again (its threads' stacks follow)",
                    state.spec.name,
                    process.pid,
                    silence,
                )
                heartbeat.unlink(missing_ok=True)  # judged once; its successor beats afresh
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(STACKS_SECONDS)
                    process.kill()

    async def _start(self, state: ChildState) -> asyncio.subprocess.Process:
        """Start the child, recording it in `state` even if the keeper waiting for it is
        cancelled meanwhile: the process exists by then, and run() must stop it."""
        # A pipe of our own rather than asyncio's: its Process.wait() also waits for the end of
        # the child's stderr, which a process the child started may hold open long after.
        env = dict(state.spec.env or os.environ)
        if state.heartbeat is not None:
            state.heartbeat.unlink(missing_ok=True)  # the last process's silence is not its
            env[HEARTBEAT_ENV] = str(state.heartbeat)
        read_end, write_end = os.pipe()
        try:
            state.process = await asyncio.create_subprocess_exec(
                *tied_to_this_process(state.spec.argv),
                env=env,
                stderr=write_end,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        # a deque of its own: the last process's stderr may still be open (see DRAIN_SECONDS)
        state.last_lines = deque(maxlen=TAIL_LINES)
        stderr = await read_pipe(read_end)
        state.passing_on = in_background(self._passing_on, pass_on(*stderr, state.last_lines))
        return state.process

    async def _keep(self, state: ChildState, ending: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff
        while not ending.is_set():
            started = loop.time()
            state.starting = asyncio.create_task(self._start(state))
            try:
                process = await asyncio.shield(state.starting)
            except OSError as exc:  # no process (out of file descriptors, processes, memory)
                state.starting = None
                log.error(
                    "%s could not be started: %s; trying again in %.1fs",
                    state.spec.name,
                    exc,
                    delay,
                )
                await wait_event(ending, delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            state.starting = None
            state.starts += 1
            log.info("started %s (pid %s)", state.spec.name, process.pid)
            if ending.is_set():  # came while it was starting: stop it now (run() waits for it)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            code = await process.wait()
            state.exits.append(code)
            if state.passing_on is not None:  # its last words, before deciding what to do
                await asyncio.wait([state.passing_on], timeout=DRAIN_SECONDS)
            if ending.is_set():
                return
            # Bad configuration only at its first start: a restart refused the same way meets a
            # passing trouble (its port taken a moment, the sandbox's engine restarting), and
            # stopping every other child and the runs in flight for it would be out of all
            # proportion; it is started again, with the backoff, as any crash.
            if code == BAD_CONFIGURATION and state.starts == 1:
                state.gave_up = True
                self.refused = self.refused or state
                log.error(
                    "%s exited with %d (bad configuration, see its error above): stopping the "
                    "others; fix the configuration and start again",
                    state.spec.name,
                    code,
                )
                ending.set()
                return
            delay = self._backoff if loop.time() - started > self._stable_after else delay
            log.warning("%s exited with %s; restarting in %.1fs", state.spec.name, code, delay)
            await wait_event(ending, delay)
            delay = min(delay * 2, self._max_backoff)

    async def _stop_all(self) -> None:
        for last in (False, True):
            await self._stop([s for s in self.children.values() if s.spec.stops_last is last])

    async def _stop(self, children: list[ChildState]) -> None:
        running = [
            s.process for s in children if s.process is not None and s.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        waits = {asyncio.create_task(p.wait()) for p in running}
        hurried = asyncio.create_task(self._hurry.wait())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        try:
            while waits and not hurried.done() and (left := deadline - loop.time()) > 0:
                done, _ = await asyncio.wait(
                    {*waits, hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                waits -= done
        finally:
            await stop_tasks([*waits, hurried])
        why = "stop hurried" if self._hurry.is_set() else "did not stop in time"
        for process in running:
            if process.returncode is None:
                log.warning("killing pid %s: %s", process.pid, why)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def read_pipe(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A stream reading the pipe `fd`, and its transport (closing it closes `fd`)."""
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return stream, transport


async def pass_on(
    stream: asyncio.StreamReader, transport: asyncio.ReadTransport, tail: deque[str]
) -> None:
    """Copy `stream` (a child's stderr) to our stderr as it comes, until it ends, keeping its
    last lines that are not blank in `tail`; then close its `transport`."""
    try:
        partial = b""
        while chunk := await stream.read(65536):
            STDERR_ECHO.write(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            partial = partial[:LINE_BYTES]  # a line that never ends is kept by its start
            for line in lines:
                keep_line(tail, line)
        keep_line(tail, partial)
    finally:
        transport.close()


def keep_line(tail: deque[str], line: bytes) -> None:
    text = line[:LINE_BYTES].decode("utf-8", errors="replace").strip()
    if text:
        tail.append(text)


class StderrEcho:
    """Writes chunks to this process's stderr from a thread of its own, so that a stderr that
    stalls (a terminal on Ctrl-S, a pager, a log collector not reading) blocks that thread and
    never the event loop, which must go on handling SIGTERM and the children. While it stalls,
    up to `MAX_WAITING` chunks wait; later ones are dropped rather than stop the reading, which
    would block the children on their full pipes. A closed stderr is ignored the same way."""

    MAX_WAITING = 256

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes] = queue.Queue(self.MAX_WAITING)
        self._thread: threading.Thread | None = None

    def write(self, chunk: bytes) -> None:
        if self._thread is None:
            # a daemon: a stderr stalled for good must not keep the process from exiting
            self._thread = threading.Thread(target=self._run, name="stderr echo", daemon=True)
            self._thread.start()
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(chunk)

    def drain(self, timeout: float) -> None:
        """Wait, `timeout` seconds at most, until what was written so far is out."""
        deadline = time.monotonic() + timeout
        with self._chunks.all_tasks_done:
            while self._chunks.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                self._chunks.all_tasks_done.wait(left)

    def _run(self) -> None:
        while True:
            chunk = self._chunks.get()
            stream = sys.stderr
            with contextlib.suppress(OSError, ValueError):
                buffer = getattr(stream, "buffer", None)
                if buffer is None:
                    stream.write(chunk.decode("utf-8", errors="replace"))
                    stream.flush()
                else:
                    stream.flush()
                    buffer.write(chunk)
                    buffer.flush()
            self._chunks.task_done()


STDERR_ECHO = StderrEcho()
