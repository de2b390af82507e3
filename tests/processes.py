"""Stopping child processes of tests so that none outlives its test, whatever happens."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys


async def stop(process: asyncio.subprocess.Process, grace: float = 30.0) -> None:
    """SIGTERM (a graceful stop is part of what is tested), then SIGKILL after `grace`."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a synchronous child unless it already ended, and reap it (a test's cleanup)."""
    if process.poll() is None:
        process.kill()
        process.wait()


async def start(
    *args: str, env: dict[str, str], ready: bytes
) -> tuple[asyncio.subprocess.Process, str]:
    """A child process, once it printed a line containing `ready`; and that line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        while ready not in (line := await asyncio.wait_for(process.stdout.readline(), 60)):
            assert line, f"{args} exited before saying {ready!r}"
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, line.decode().strip()


def into_a_closed_pipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`codeyard ARGS...` writing to a pipe nobody reads any more, as `| head -1` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        command = [sys.executable, "-m", "codeyard", *args]
        return subprocess.run(command, env=env, stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)


def codeyard(
    env: dict[str, str], *args: str, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """`codeyard ARGS...` run to its end, with its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "codeyard", *args],
        env=env,
        stdin=subprocess.DEVNULL,  # not pytest's terminal: nothing is asked at a prompt
        capture_output=True,
        text=True,
        timeout=timeout,
    )
