"""`OutputTail`: the bounded tail of a sandboxed command's combined output, as every backend
reports it (`RunOutcome.output`), and `pump`, which feeds it from a subprocess pipe."""

from __future__ import annotations

import asyncio

CHUNK_BYTES = 64 * 1024


class OutputTail:
    """Keeps the last `cap` bytes written to it, in at most 2 * cap bytes of memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self._buffer = bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buffer += chunk
        if len(self._buffer) > 2 * self.cap:
            del self._buffer[: len(self._buffer) - self.cap]

    def text(self) -> str:
        kept = bytes(self._buffer[-self.cap :])
        text = kept.decode("utf-8", errors="replace")
        omitted = self.total - len(kept)
        if not omitted:
            return text
        return (
            f"[codeyard sandbox: output truncated, {omitted} earlier bytes omitted, "
            f"the last {len(kept)} bytes follow]\n{text}"
        )


async def pump(stream: asyncio.StreamReader, tail: OutputTail) -> None:
    """Reads `stream` into `tail` until its writers are gone."""
    while chunk := await stream.read(CHUNK_BYTES):
        tail.add(chunk)
