"""Transient endpoint failures are retried with backoff and counted; others are not retried."""

from __future__ import annotations

import socket
import time

import pytest

from codeyard.llm import LLMRejected, LLMUnavailable, OpenAIClient
from codeyard.llm.openai_client import retry_after_of
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import ASK, DESCRIPTION, TOOL, VALID, Plan, ask, settings

TOKENS = {"prompt_tokens": 40, "completion_tokens": 10}


async def test_500_and_429_are_retried_and_only_answers_count_as_usage() -> None:
    replies = [
        {"status": 500, "times": 2},
        {"status": 429},
        {"arguments": VALID, "usage": TOKENS},
    ]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_retries=3)
        requests = server.requests

    assert len(requests) == 4
    assert all(r.body["messages"] == ASK for r in requests)  # a retry resends the same ask
    assert done.attempts == 1
    assert (done.usage.calls, done.usage.prompt_tokens, done.usage.completion_tokens) == (1, 40, 10)


async def test_retries_and_reasks_combine() -> None:
    replies = [
        {"status": 502},
        {"arguments": {"title": "auth"}, "usage": TOKENS},
        {"status": 503},
        {"arguments": VALID, "usage": TOKENS},
    ]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_retries=1)
        requests = server.requests

    assert len(requests) == 4
    assert done.attempts == 2
    assert (done.usage.calls, done.usage.prompt_tokens) == (2, 80)
    # The retry after the 503 resends the re-ask, not the original question.
    assert requests[3].body["messages"] == requests[2].body["messages"]
    assert "- steps: Field required" in requests[3].body["messages"][-1]["content"]


async def test_unavailable_once_retries_are_exhausted() -> None:
    replies = [{"status": 503, "message": "overloaded"}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=2)
        requests = server.requests

    assert len(requests) == 3
    # with the endpoint's words: an account out of credit said so only there
    assert "failed 3 times; last: HTTP 503: overloaded" in str(failure.value)
    assert failure.value.usage.calls == 0
    assert failure.value.model == ""  # nothing answered


async def test_an_account_out_of_quota_is_not_waited_for() -> None:
    """OpenAI answers 429 with `insufficient_quota` when the account has no credit left; retried
    as a rate limit, every work item waited out its retries and the outage patience, and the
    run failed an hour later saying only "HTTP 429"."""
    quota = "You exceeded your current quota, please check your plan and billing details."
    replies = [{"status": 429, "message": quota, "code": "insufficient_quota"}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMRejected) as failure:
            await ask(server, max_retries=3)
        requests = server.requests

    assert len(requests) == 1
    assert failure.value.status == 429
    assert quota in str(failure.value)


async def test_a_timeout_is_retried_then_reported() -> None:
    replies = [{"arguments": VALID, "delay": 1.0}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=1, timeout_seconds=0.2)
        requests = server.requests

    assert len(requests) == 2
    assert "last: no answer within 0.2s" in str(failure.value)


async def test_a_server_trickling_its_answer_is_cut_off_at_the_timeout() -> None:
    # One byte every 0.25 s: each read is quick, so the SDK's timeout (per read) never fires,
    # while the whole answer would take well over a minute. `timeout_seconds` bounds the
    # request as a whole, and each retry gets its own.
    replies = [{"arguments": VALID, "trickle": 0.25}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        started = time.monotonic()
        with pytest.raises(LLMUnavailable) as failure:
            await ask(server, max_retries=1, timeout_seconds=1.0)
        took = time.monotonic() - started
        requests = server.requests

    assert len(requests) == 2
    assert "failed 2 times; last: no answer within 1s" in str(failure.value)
    assert took < 30  # generous; the answers trickled in full would take minutes


async def test_an_answer_cut_off_at_the_timeout_is_asked_again() -> None:
    replies = [{"arguments": VALID, "trickle": 0.25}, {"arguments": VALID, "usage": TOKENS}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        done = await ask(server, max_retries=1, timeout_seconds=1.0)
        requests = server.requests

    assert len(requests) == 2
    assert requests[1].body["messages"] == ASK  # a retry, not a re-ask: nothing was answered
    assert (done.attempts, done.usage.calls, done.usage.prompt_tokens) == (1, 1, 40)


async def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = settings(f"http://127.0.0.1:{port}/v1", max_retries=2)
    async with OpenAIClient(nowhere) as client:
        with pytest.raises(LLMUnavailable) as failure:
            await client.structured(
                "coder", ASK, Plan, tool_name=TOOL, tool_description=DESCRIPTION
            )

    assert "failed 3 times; last: connection failed" in str(failure.value)


async def test_a_request_the_endpoint_refuses_is_not_retried() -> None:
    replies = [{"status": 401, "message": "bad key"}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(LLMRejected) as failure:
            await ask(server, max_retries=3)
        requests = server.requests

    assert len(requests) == 1
    assert failure.value.status == 401
    assert failure.value.model == ""  # nothing answered
    assert "bad key" in str(failure.value)


@pytest.mark.parametrize(("status", "raised"), [(503, LLMUnavailable), (400, LLMRejected)])
async def test_an_endpoint_failing_after_an_answer_names_the_model_that_gave_it(
    status: int, raised: type[LLMUnavailable | LLMRejected]
) -> None:
    # The first answer is paid for but does not fit; the re-ask fails: the error carries what
    # the answer cost and the model that gave it.
    replies = [{"arguments": {"steps": ["x"]}, "model": "gpt-4o-2024-08-06"}, {"status": status}]
    async with ScriptedOpenAI(parse_script([{"tool": TOOL, "replies": replies}])) as server:
        with pytest.raises(raised) as failure:
            await ask(server, max_retries=0)

    assert (failure.value.usage.calls, failure.value.model) == (1, "gpt-4o-2024-08-06")


def test_the_wait_an_endpoint_asks_for_is_read_in_milliseconds_first() -> None:
    """OpenAI and Azure send `retry-after-ms` beside `retry-after`; the finer one was ignored."""
    assert retry_after_of({"retry-after-ms": "1500", "retry-after": "2"}) == 1.5
    assert retry_after_of({"retry-after": "7"}) == 7.0
    assert retry_after_of({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_of({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_after_of({}) is None
