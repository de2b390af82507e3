"""`ScriptedOpenAI`: an OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script
(see `codeyard.testing.openai_script` for the format). A test double: never used by the
product's own code paths.

It serves `POST /v1/chat/completions` and `GET /v1/models`, records every request, and answers
anything else with an OpenAI-style error naming the problem. In a test:

    async with ScriptedOpenAI(parse_script([...])) as server:   # or `with` from sync code
        ... LLMSettings(base_url=server.base_url) ...
        server.requests[0].body["messages"]

As a process, which prints `READY <base_url>` once it listens and stops on SIGTERM or SIGINT:

    python -m codeyard.testing.openai_server --script FILE.json [--port N] [--record FILE.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from codeyard.testing.openai_script import Answer, Rule, Script, error, load_script

HOST = "127.0.0.1"
POLL_SECONDS = 0.05
STOP_PATIENCE = 5.0  # for the serving thread to see a stop (a request it reads may hold it)


class RecordedRequest(msgspec.Struct, kw_only=True, frozen=True):
    method: str
    path: str
    body: Any  # the decoded JSON, None when there was no body or it was not JSON


class ScriptedOpenAI:
    """Serves on its own thread, so it answers whether or not the caller's event loop is free.
    Use as a context manager (sync or async), or call `start()` / `stop()`."""

    def __init__(self, rules: Sequence[Rule], *, port: int = 0, record: Path | None = None) -> None:
        self._script = Script(list(rules))
        self._requested_port = port
        self._record = record
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the scripted server is not started")
        port: int = self._http.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def start(self) -> None:
        scripted = self

        class Handler(RequestHandler):
            server_of = scripted

        self._http = ThreadingHTTPServer((HOST, self._requested_port), Handler)
        # Handler threads may sit in a scripted delay; they must not hold up a stop.
        self._http.daemon_threads = True
        self._http.timeout = POLL_SECONDS
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=_serve,
            args=(self._http, self._stopping),
            name="scripted-openai",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._http is None or self._thread is None:
            return
        # Not `shutdown()`: it waits, without end, for a `serve_forever` to end, and a test
        # suite hung at exit in it once (a thread left in stop, for ever).
        self._stopping.set()
        self._thread.join(STOP_PATIENCE)
        self._http.server_close()
        self._thread = None

    def answer(self, method: str, path: str, raw: bytes) -> Answer:
        try:
            body = json.loads(raw) if raw else None
        except ValueError as problem:
            self._remember(RecordedRequest(method=method, path=path, body=None))
            return error(400, f"the request body is not JSON: {problem}")
        self._remember(RecordedRequest(method=method, path=path, body=body))
        return self._script.answer(method, path, body)

    def _remember(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            if self._record:
                with open(self._record, "ab") as log:
                    log.write(msgspec.json.encode(request) + b"\n")

    def __enter__(self) -> ScriptedOpenAI:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> ScriptedOpenAI:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Stopping waits for the serving thread's next poll; keep the event loop free meanwhile.
        await asyncio.to_thread(self.stop)


def _serve(http: ThreadingHTTPServer, stopping: threading.Event) -> None:
    while not stopping.is_set():
        http.handle_request()  # back within POLL_SECONDS when nothing comes


class RequestHandler(BaseHTTPRequestHandler):
    server_of: ScriptedOpenAI
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
    # Headers and body go out in two writes; with Nagle's algorithm on, the second one waits
    # for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        answer = self.server_of.answer(method, self.path.split("?", 1)[0], raw)
        if answer.delay:
            time.sleep(answer.delay)
        payload = answer.payload()
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if answer.trickle:
                self._trickle(payload, answer.trickle)
            else:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); nothing left to tell it.
            self.close_connection = True

    def _trickle(self, payload: bytes, gap: float) -> None:
        """One byte at a time, `gap` seconds apart: never silent for `gap`, so a client's
        timeout per read never fires, however long the whole body takes."""
        for index in range(len(payload)):
            self.wfile.write(payload[index : index + 1])
            self.wfile.flush()
            time.sleep(gap)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one stderr line per request would drown test output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="JSON list of rules")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--record", type=Path, help="append every request here as JSON lines")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the serving thread starts, so it inherits the mask and the signals wait
    # for `sigwait` below instead of interrupting a request.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = ScriptedOpenAI(load_script(args.script), port=args.port, record=args.record)
    server.start()
    print(f"READY {server.base_url}", flush=True)
    signal.sigwait(stop_signals)
    server.stop()


if __name__ == "__main__":
    main()
