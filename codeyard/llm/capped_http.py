"""The openai SDK's HTTP client, with every response body cut off past a size cap.

The SDK reads a body whole before codeyard sees it: an endpoint sending an endless or
multi-gigabyte body (a broken proxy, a local server streaming garbage) would run the worker out
of memory before any check on the answer could refuse it.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx2
import msgspec
import openai

from codeyard.llm.tool_call import MAX_ARGUMENTS_CHARS

MIB = 1 << 20

# The body of the longest answer codeyard accepts, and room to spare: arguments of
# MAX_ARGUMENTS_CHARS characters, each up to 12 bytes in the body's JSON (one outside the BMP
# escaped as a surrogate pair, "\ud83d\ude00"), and a few MiB for the rest of the completion
# (text or reasoning beside the call). A body any longer is no answer codeyard would use.
MAX_BODY_BYTES = 12 * MAX_ARGUMENTS_CHARS + 8 * MIB


# An answer to one request has one choice, and a forced tool call one call (a few more are
# re-asked as one): far more is no answer. The SDK builds its objects for every element, on the
# event loop, at tens of µs each: 1.6 MB of empty tool calls held a worker's loop for 45 s,
# its heartbeats with it, and the work it held went to a second worker meanwhile.
MAX_CHOICES = 16
MAX_TOOL_CALLS = 64


class BodyTooLarge(Exception):
    """A response body over the cap, in bytes (what was not read of it was left unread, its
    connection closed) or in choices or tool calls (not handed to the SDK)."""


class _Message(msgspec.Struct):
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None


class _Completion(msgspec.Struct):
    """Only what is counted; a body of another shape is the SDK's to refuse."""

    choices: list[_Choice] | None = None


def too_many_parts(body: bytes) -> str:
    """Why `body` holds more choices or tool calls than any answer, or ""."""
    try:
        completion = msgspec.json.decode(body, type=_Completion)
    except (msgspec.DecodeError, RecursionError):
        return ""  # not JSON, or not a completion's shape: refused as such by the SDK
    choices = completion.choices or []
    if len(choices) > MAX_CHOICES:
        return f"the answer has {len(choices):,} choices (more than {MAX_CHOICES}: not read)"
    calls = max((len(c.message.tool_calls or []) for c in choices if c.message), default=0)
    if calls > MAX_TOOL_CALLS:
        return (
            f"the answer has {calls:,} tool calls in a choice "
            f"(more than {MAX_TOOL_CALLS}: not read)"
        )
    return ""


def capped_client() -> httpx2.AsyncClient:
    """The client the SDK would make itself (its timeout, connection limits and pooling,
    redirects, proxies from the environment), refusing any body over MAX_BODY_BYTES decoded.

    A response hook rather than a wrapping transport: given a transport, httpx no longer
    routes through the proxies the environment names."""
    return openai.DefaultAsyncHttpxClient(event_hooks={"response": [cap_body]})


async def cap_body(response: httpx2.Response) -> None:
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > MAX_BODY_BYTES:
        raise BodyTooLarge(
            f"the answer announces {announced} bytes, more than the {MAX_BODY_BYTES} a "
            "response may have (not read)"
        )
    response.stream = CappedStream(response, MAX_BODY_BYTES)
    # Decoded by the stream, where its size is counted: httpx must not decode it again.
    response.headers.pop("content-encoding", None)


class CappedStream(httpx2.AsyncByteStream):
    """`response`'s body, decoded, raising `BodyTooLarge` once over `cap` bytes. Decoded sizes
    are counted because the decoded body is what is kept: a few KiB of gzip can inflate to
    gigabytes."""

    def __init__(self, response: httpx2.Response, cap: int) -> None:
        self._raw = response.stream
        self._cap = cap
        # A response of its own to decode the raw stream as httpx would (gzip, deflate...).
        self._body = httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=response.stream,
            request=response.request,
        )

    @property
    def elapsed(self) -> datetime.timedelta | None:
        # `Response.elapsed` reads it from the stream, where httpx's own sets it once closed.
        elapsed: datetime.timedelta | None = getattr(self._raw, "elapsed", None)
        return elapsed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        read: list[bytes] = []
        async with aclosing(self._body.aiter_bytes()) as parts:
            async for part in parts:
                size += len(part)
                if size > self._cap:
                    raise BodyTooLarge(
                        f"the answer is longer than the {self._cap} bytes a response may "
                        "have (cut off there, the rest not read)"
                    )
                read.append(part)
                yield part
        # Raised before the body's reader sees its end: the SDK builds nothing of it.
        if problem := too_many_parts(b"".join(read)):
            raise BodyTooLarge(problem)

    async def aclose(self) -> None:
        await self._body.aclose()
