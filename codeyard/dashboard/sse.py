"""Server-sent events framing of run events (pure)."""

from __future__ import annotations

import msgspec

from codeyard.schemas import RunEvent

KEEPALIVE = b": keepalive\n\n"
# How long a browser waits before reconnecting a dropped stream, in milliseconds.
RETRY = b"retry: 2000\n\n"


def sse_frame(event: RunEvent) -> bytes:
    """One event named by its message type; its data is the event's JSON, which has no raw
    newline (JSON escapes them in strings), so it is one `data:` line."""
    name = type(event).__name__
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"
