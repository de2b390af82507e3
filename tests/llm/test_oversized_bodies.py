"""Response bodies longer than any answer codeyard accepts, over real HTTP: the client stops
reading at the cap and closes the connection, so an endless body costs no more memory than the
cap, and the endpoint's failure is retried like a body that is not JSON."""

from __future__ import annotations

import functools
import json
import zlib
from typing import Any

import pytest

from codeyard.llm import Completion, LLMUnavailable, OpenAIClient
from codeyard.llm.capped_http import MAX_BODY_BYTES, capped_client
from codeyard.llm.tool_call import MAX_ARGUMENTS_CHARS
from codeyard.schemas import Usage
from tests.llm.raw_server import Framing, RawServer, Reply
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, VALID, Plan, settings

TOKENS = {"prompt_tokens": 40, "completion_tokens": 10}

PIECE = b" " * (64 << 10)
# Far more than the cap, but an end all the same, for a client that would read it all.
ENDLESS = 4 * MAX_BODY_BYTES // len(PIECE)

# What a client reading up to the cap makes the server write: the cap, and what the sockets'
# buffers took beyond it (a few MiB on loopback, 1.2 caps in all as measured).
UNREAD = 2 * MAX_BODY_BYTES


def completion(arguments: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": TOOL, "arguments": arguments}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "base-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
        "usage": TOKENS | {"total_tokens": 50},
    }


def answer(arguments: dict[str, Any]) -> bytes:
    return json.dumps(completion(json.dumps(arguments))).encode()


# An emoji is one character of the arguments, and 12 bytes of a body escaping it as JSON may
# ("\ud83d\ude00"): the most one character can weigh.
EMOJI = "\U0001f600"


@functools.cache
def largest_answer() -> tuple[str, bytes]:
    """The title of arguments as long as an answer's may be, all emoji, and a completion
    holding them as `json.dumps` writes it (escaped), padded with spaces to the cap."""
    shell = len(json.dumps({"title": "", "steps": ["x"]}))
    title = EMOJI * (MAX_ARGUMENTS_CHARS - shell)
    arguments = json.dumps({"title": title, "steps": ["x"]}, ensure_ascii=False)
    assert len(arguments) == MAX_ARGUMENTS_CHARS
    body = json.dumps(completion(arguments)).encode()
    assert 12 * MAX_ARGUMENTS_CHARS - 100_000 < len(body) <= MAX_BODY_BYTES
    return title, body + b" " * (MAX_BODY_BYTES - len(body))


@functools.cache
def inflating_to(size: int) -> bytes:
    """gzip of `size` spaces: a few KiB."""
    packer = zlib.compressobj(wbits=31)
    packed = [packer.compress(PIECE) for _ in range(size // len(PIECE))]
    return b"".join([*packed, packer.flush()])


async def ask(base_url: str, **overrides: Any) -> Completion[Plan]:
    async with OpenAIClient(settings(base_url, **overrides)) as client:
        return await client.structured(
            "planner", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
        )


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_the_longest_answer_codeyard_accepts_fits_in_the_cap(framing: Framing) -> None:
    title, body = largest_answer()
    async with RawServer([Reply(body, framing)]) as server:
        done = await ask(server.base_url)

    assert len(done.value.title) == len(title)  # first: a failed == would print both strings
    assert done.value.title == title
    assert done.usage == Usage(calls=1, prompt_tokens=40, completion_tokens=10)


@pytest.mark.parametrize(
    ("framing", "problem"),
    [
        ("length", f"announces {MAX_BODY_BYTES + 1} bytes, more than the {MAX_BODY_BYTES}"),
        ("chunked", f"is longer than the {MAX_BODY_BYTES} bytes a response may have"),
    ],
    ids=["announced", "in chunks"],
)
async def test_a_body_one_byte_over_the_cap_is_refused(framing: Framing, problem: str) -> None:
    _, body = largest_answer()
    async with RawServer([Reply(body + b" ", framing)]) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server.base_url, max_retries=0)

    assert f"failed 1 times; last: the answer {problem}" in str(failure.value)


ENDLESS_BODIES: dict[str, tuple[Framing, str]] = {
    # refused from its header, before a byte of it is read
    "announced": ("length", f"announces {ENDLESS * len(PIECE)} bytes"),
    "in chunks": ("chunked", f"longer than the {MAX_BODY_BYTES} bytes"),
    "until closed": ("close", f"longer than the {MAX_BODY_BYTES} bytes"),
}


@pytest.mark.parametrize(("framing", "problem"), ENDLESS_BODIES.values(), ids=ENDLESS_BODIES.keys())
async def test_an_endless_body_is_cut_off_unread(framing: Framing, problem: str) -> None:
    async with RawServer([Reply(PIECE, framing, repeat=ENDLESS)]) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server.base_url, max_retries=0)

    assert problem in str(failure.value)
    (sent,) = server.sent
    assert sent.hung_up  # the client closed the connection rather than read on
    assert sent.body_bytes < UNREAD


async def test_a_body_cut_off_is_retried_on_a_new_connection() -> None:
    replies = [
        Reply(PIECE, "chunked", repeat=ENDLESS),
        Reply(answer({"title": "auth"})),  # no steps: asked again
        Reply(answer(VALID)),
    ]
    async with RawServer(replies) as server:
        done = await ask(server.base_url, max_retries=1)

    assert (done.value, done.attempts) == (Plan(**VALID), 2)  # retried, then re-asked
    assert server.requests[1]["messages"] == ASK
    assert done.usage == Usage(calls=2, prompt_tokens=80, completion_tokens=20)
    # The cut one was closed; the retry's connection is kept for the re-ask.
    assert server.connections == 2


async def test_a_body_over_the_cap_every_time_is_unavailable_with_usage() -> None:
    replies = [Reply(answer({"title": "auth"})), Reply(PIECE, "chunked", repeat=ENDLESS)]
    async with RawServer(replies) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server.base_url, max_retries=1)

    assert len(server.requests) == 3  # the first ask, then the re-ask and its retry
    assert f"failed 2 times; last: the answer is longer than the {MAX_BODY_BYTES}" in str(
        failure.value
    )
    assert failure.value.usage == Usage(calls=1, prompt_tokens=40, completion_tokens=10)
    assert all(sent.body_bytes < UNREAD for sent in server.sent)


async def test_a_compressed_body_is_capped_as_it_inflates() -> None:
    bomb = Reply(inflating_to(ENDLESS * len(PIECE)), headers={"Content-Encoding": "gzip"})
    async with RawServer([bomb]) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server.base_url, max_retries=0)

    assert f"longer than the {MAX_BODY_BYTES} bytes" in str(failure.value)


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15)])
async def test_a_compressed_answer_is_read(encoding: str, wbits: int) -> None:
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(answer(VALID)) + packer.flush()
    async with RawServer([Reply(packed, headers={"Content-Encoding": encoding})]) as server:
        done = await ask(server.base_url)

    assert (done.value, done.attempts) == (Plan(**VALID), 1)


async def test_a_response_still_tells_how_long_it_took() -> None:
    async with RawServer([Reply(answer(VALID))]) as server, capped_client() as http:
        response = await http.post(f"{server.base_url}/chat/completions", json={})

    assert response.json() == completion(json.dumps(VALID))
    assert response.elapsed.total_seconds() > 0
