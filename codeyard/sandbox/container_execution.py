"""`ContainerExecution`: a started sandbox container as the supervision sees it
(`codeyard.sandbox.supervision`), and `remove_container`.

Talks to the engine through the SDK's low-level API with as few round trips as a run allows:
attach (raw socket, demultiplexed here), start, wait, and one inspection for what only the
engine knows (its OOM killer); none for the settings, which are ours. The SDK blocks, so each
call runs in a thread; the two that block for a whole run (reading the output, waiting for the
exit) get threads of their own (`in_own_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import docker.errors
import requests.exceptions
from docker.api.client import APIClient
from docker.utils.socket import frames_iter

from codeyard.sandbox.limits import Limits
from codeyard.sandbox.output import OutputTail

log = logging.getLogger(__name__)
T = TypeVar("T")

ENGINE_TIMEOUT = 60  # seconds for one API call; waiting for the command has its own
# What a call to the engine raises when it fails: the SDK lets the HTTP client's own errors
# through (a connection cut mid-run, refused, or timed out), and they are no DockerException.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
# The SDK's demultiplexer of an attached stream, untyped there: (stream, tty) -> (source, chunk).
_frames = cast(Callable[[Any, bool], Iterator[tuple[int, bytes]]], frames_iter)


class ContainerExecution:
    """The created container `container_id`, attached and started by `start`."""

    def __init__(self, api: APIClient, container_id: str, limits: Limits) -> None:
        self.output = OutputTail(limits.output_bytes)
        self.started = 0.0
        self._api = api
        self._id = container_id
        self._limits = limits
        self._reader: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[int] | None = None

    async def start(self) -> None:
        # Attached before the start, so no early output is missed.
        params = {"stdout": 1, "stderr": 1, "stream": 1}
        stream = await asyncio.to_thread(self._api.attach_socket, self._id, params)
        self._reader = in_own_thread(lambda: _drain(stream, self.output))
        self.started = time.monotonic()
        await asyncio.to_thread(self._api.start, self._id)
        # The engine's answer may come late on a loaded machine: the kill, not this, bounds it.
        timeout = math.ceil(self._limits.wall_seconds) + ENGINE_TIMEOUT
        self._waiter = in_own_thread(
            lambda: int(self._api.wait(self._id, timeout=timeout)["StatusCode"])
        )

    async def output_closed(self) -> None:
        # The engine ends the attached stream when the container stops (or is removed).
        assert self._reader is not None
        await asyncio.shield(self._reader)

    async def exit_status(self) -> int:
        assert self._waiter is not None
        return await asyncio.shield(self._waiter)

    async def kill(self) -> None:
        await asyncio.to_thread(self._kill)

    def pids_hit(self) -> None:
        return None  # Docker's pids limit is a cgroup the engine does not report on

    def memory_hit(self) -> None:
        return None  # known after the run, from the engine (`oom_killed`)

    def oom_killed(self) -> bool:
        """Whether the container's OOM killer struck (blocking; one inspection). False when
        the container is gone already: a probe of another codeyard sweeps exited ones."""
        try:
            state = self._api.inspect_container(self._id)["State"]
        except docker.errors.NotFound:
            return False
        return bool(state.get("OOMKilled"))

    def _kill(self) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self._api.kill(self._id)


def remove_container(api: APIClient, container_id: str) -> bool:
    """Removes the container, killing what is left of it (blocking). Whether it is gone: False
    when the engine failed to remove it, so it may still run."""
    try:
        api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS as exc:
        # Another codeyard's sweep removes it (HTTP 409, "removal ... already in progress"):
        # gone once that ends. Taken for a failure, it kept the workdir lent for nothing.
        if _removal_in_progress(exc):
            return _gone(api, container_id)
        log.warning("could not remove sandbox container %s", container_id, exc_info=True)
        return False
    return True


def _removal_in_progress(error: Exception) -> bool:
    return (
        isinstance(error, docker.errors.APIError)
        and error.status_code == 409
        and "already in progress" in str(error)
    )


def _gone(api: APIClient, container_id: str) -> bool:
    """Whether the container is gone within `ENGINE_TIMEOUT` seconds (blocking)."""
    give_up = time.monotonic() + ENGINE_TIMEOUT
    while time.monotonic() < give_up:
        try:
            api.inspect_container(container_id)
        except docker.errors.NotFound:
            return True
        except ENGINE_ERRORS:
            return False
        time.sleep(0.05)
    return False


def in_own_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    """`call()` in a thread of its own. For the calls that block for a whole run (waiting for
    the container, streaming its output): in the loop's default executor (a handful of threads
    on a small machine) a few concurrent runs would take every thread, and the short calls that
    end a run (kill, remove) would queue behind the waits they are meant to end."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:
            done = functools.partial(future.set_exception, exc)
        else:
            done = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    # A run that was cancelled never awaits it: its error is not news then.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    threading.Thread(target=target, name="codeyard-docker-run", daemon=True).start()
    return future


def _drain(stream: Any, tail: OutputTail) -> None:
    """Reads the attached stream (stdout and stderr frames, interleaved) into `tail`."""
    try:
        with contextlib.suppress(docker.errors.DockerException, OSError, ValueError):
            for _source, chunk in _frames(stream, False):
                tail.add(chunk)
    finally:
        stream.close()
