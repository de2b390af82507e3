"""`RawServer`: an HTTP/1.1 server on 127.0.0.1 answering every request with the next scripted
`Reply`, written byte for byte as told (announced length, chunks or until closed; a body
repeated without end), which counts what it got written before the client hung up.

`ScriptedOpenAI` writes bodies it holds whole, with their length: it cannot send one far
larger than memory, nor one without a length."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, BinaryIO, Literal

HOST = "127.0.0.1"

Framing = Literal["length", "chunked", "close"]


@dataclass(frozen=True, slots=True)
class Reply:
    """HTTP 200 with `body` sent `repeat` times over, framed by Content-Length (of the whole),
    chunks (one per repeat), or the end of the connection."""

    body: bytes
    framing: Framing = "length"
    repeat: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sent:
    body_bytes: int  # of the body, as far as it got written (framing excluded)
    hung_up: bool  # the client closed the connection before the body was all written


class RawServer:
    """Serves on its own threads; the last reply answers every request past the script.
    Leaving the `async with` block waits for every connection to end, so `sent` is final."""

    def __init__(self, replies: list[Reply]) -> None:
        self._replies = replies
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0))
        self._threads: list[threading.Thread] = []
        self.requests: list[Any] = []  # the JSON bodies, in order
        self.sent: list[Sent] = []
        self.connections = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._listener.getsockname()[1]}/v1"

    async def __aenter__(self) -> RawServer:
        accepting = threading.Thread(target=self._accept, name="raw-server", daemon=True)
        accepting.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._listener.close()  # ends `_accept`
        for thread in list(self._threads):
            thread.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            serving = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(serving)
            serving.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as incoming:
            while self._request(incoming) and self._reply(connection):
                pass

    def _request(self, incoming: BinaryIO) -> bool:
        """Reads one request; False once the client closed the connection."""
        length = 0
        try:
            line = incoming.readline()
            while line not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                line = incoming.readline()
            body = incoming.read(length)
        except OSError:  # reset: a client closing with a reply unread
            return False
        if not line:
            return False
        with self._lock:
            self.requests.append(json.loads(body) if body else None)
        return True

    def _reply(self, connection: socket.socket) -> bool:
        """Writes the next reply; True when the connection may take another request."""
        with self._lock:
            reply = self._replies[min(len(self.requests), len(self._replies)) - 1]
        head = ["HTTP/1.1 200 OK", "Content-Type: application/json"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        head.append(
            {
                "length": f"Content-Length: {len(reply.body) * reply.repeat}",
                "chunked": "Transfer-Encoding: chunked",
                "close": "Connection: close",
            }[reply.framing]
        )
        written = 0
        try:
            connection.sendall("\r\n".join(head).encode() + b"\r\n\r\n")
            piece = reply.body
            if reply.framing == "chunked":
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            for _ in range(reply.repeat):
                connection.sendall(piece)
                written += len(reply.body)
            if reply.framing == "chunked":
                connection.sendall(b"0\r\n\r\n")
        except OSError:  # a broken pipe or a reset: the client hung up
            self._record(Sent(written, hung_up=True))
            return False
        self._record(Sent(written, hung_up=False))
        return reply.framing != "close"

    def _record(self, sent: Sent) -> None:
        with self._lock:
            self.sent.append(sent)
