"""Keeps a set of child processes running: `codeyard up` runs every role this way.

A child that exits is started again after a backoff that grows while it keeps crashing and
resets once it has stayed up a while, unless it exited with BAD_CONFIGURATION: starting it
again would only fail the same way, for ever. Stopping sends SIGTERM to every child, waits for
them to finish their in-flight work, then kills what is left.

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the process
supervising them, which stops them in its own order; and they get SIGTERM from the kernel if
that process dies without stopping them (codeyard.parent_death).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from codeyard.cancellation import stop_tasks, wait_event
from codeyard.parent_death import tied_to_this_process

log = logging.getLogger(__name__)

# What `codeyard` service commands exit with on bad configuration (a dashboard token too short,
# a port in use, no sandbox, an unknown role: codeyard.cli._serve).
BAD_CONFIGURATION = 2


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None


@dataclass
class ChildState:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    gave_up: bool = False  # exited with BAD_CONFIGURATION: not started again
    starting: asyncio.Task[asyncio.subprocess.Process] | None = None


class Supervisor:
    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.children = {spec.name: ChildState(spec) for spec in children}
        if len(self.children) != len(children):
            raise ValueError("child names must be unique")
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout

    async def run(self, stop: asyncio.Event) -> None:
        """Run every child until `stop` is set, then stop them all."""
        keepers = [asyncio.create_task(self._keep(state, stop)) for state in self.children.values()]
        try:
            await stop.wait()
        finally:
            await self._stop_all()
            await stop_tasks(keepers)
            # A keeper that was starting a child when `stop` came: the first pass could not see
            # the child, and cancelling the keeper does not stop its start (see _start).
            starting = [s.starting for s in self.children.values() if s.starting is not None]
            await asyncio.gather(*starting, return_exceptions=True)
            await self._stop_all()

    async def _start(self, state: ChildState) -> asyncio.subprocess.Process:
        """Start the child, recording it in `state` even if the keeper waiting for it is
        cancelled meanwhile: the process exists by then, and run() must stop it."""
        state.process = await asyncio.create_subprocess_exec(
            *tied_to_this_process(state.spec.argv),
            env=dict(state.spec.env) if state.spec.env else None,
            start_new_session=True,
        )
        return state.process

    async def _keep(self, state: ChildState, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff
        while not stop.is_set():
            started = loop.time()
            state.starting = asyncio.create_task(self._start(state))
            process = await asyncio.shield(state.starting)
            state.starting = None
            state.starts += 1
            log.info("started %s (pid %s)", state.spec.name, process.pid)
            if stop.is_set():  # came while it was starting: stop it now (run() waits for it)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            code = await process.wait()
            state.exits.append(code)
            if stop.is_set():
                return
            if code == BAD_CONFIGURATION:
                state.gave_up = True
                log.error(
                    "%s exited with %d (bad configuration, see its error above): not restarting "
                    "it; fix the configuration and start again",
                    state.spec.name,
                    code,
                )
                return
            delay = self._backoff if loop.time() - started > self._stable_after else delay
            log.warning("%s exited with %s; restarting in %.1fs", state.spec.name, code, delay)
            await wait_event(stop, delay)
            delay = min(delay * 2, self._max_backoff)

    async def _stop_all(self) -> None:
        running = [
            s.process
            for s in self.children.values()
            if s.process is not None and s.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        _, late = await asyncio.wait(
            [asyncio.create_task(p.wait()) for p in running], timeout=self._stop_timeout
        )
        for process in running:
            if process.returncode is None:
                log.warning("killing pid %s: did not stop in time", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in late:
            task.cancel()
