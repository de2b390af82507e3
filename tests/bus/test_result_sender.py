"""Results that finish together are stored as one message; a lone one goes as itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from codeyard.bus import Bus
from codeyard.bus.connection import MSG_ID_HEADER
from codeyard.bus.pipeline import Pending, PublishError
from codeyard.bus.result_sender import ResultSender, ResultTooLarge, batch_msg_id
from codeyard.bus.subjects import RESULT_STREAM, result_subject
from codeyard.schemas import (
    Result,
    ResultBatch,
    ResultMessage,
    TestResult,
    decode,
    encode,
)

SENT_AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def passing(task_id: str, output: str = "1 passed") -> TestResult:
    return TestResult(
        run_id="run1",
        task_id=task_id,
        attempt=1,
        msg_id=f"result-{task_id}",
        trace_id="trace1",
        sent_at=SENT_AT,
        passed=True,
        output=output,
    )


@dataclass(frozen=True)
class Stored:
    data: bytes
    msg_id: str  # the Nats-Msg-Id it was published with


async def stored(bus: Bus) -> list[Stored]:
    """The messages in the results stream, oldest first (read, not consumed)."""
    state = (await bus.js.stream_info(RESULT_STREAM)).state
    messages = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        msg = await bus.js.get_msg(RESULT_STREAM, seq)
        messages.append(Stored(msg.data or b"", (msg.headers or {}).get(MSG_ID_HEADER, "")))
    return messages


def unpacked(messages: list[Stored]) -> list[Result]:
    results: list[Result] = []
    for msg in messages:
        message = decode(msg.data, ResultMessage)
        results += message.results if isinstance(message, ResultBatch) else [message]
    return results


async def test_results_sent_in_the_same_turn_are_one_message(bus: Bus) -> None:
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    results = [passing(f"t{n}") for n in range(5)]

    await asyncio.gather(*(sender.send(result) for result in results))

    [msg] = await stored(bus)
    batch = decode(msg.data, ResultMessage)
    assert isinstance(batch, ResultBatch)
    assert list(batch.results) == results  # in order, each with its own ids
    assert batch.msg_id == batch_msg_id([result.msg_id for result in results])
    assert msg.msg_id == batch.msg_id
    assert batch.run_id == ""


async def test_a_lone_result_is_stored_as_itself(bus: Bus) -> None:
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    result = passing("t1")

    await sender.send(result)
    await sender.send(passing("t2"))  # the next turn: a message of its own

    first, second = await stored(bus)
    assert first.data == encode(result)
    assert first.msg_id == result.msg_id
    assert decode(second.data, ResultMessage) == passing("t2")


async def test_a_batch_is_split_to_stay_under_its_size_limit(bus: Bus) -> None:
    results = [passing(f"t{n}", output="x" * 1000) for n in range(5)]
    two = 2 * len(encode(results[0]))
    sender = ResultSender(bus.pipeline, result_subject("tester"), max_bytes=two)

    await asyncio.gather(*(sender.send(result) for result in results))

    messages = await stored(bus)
    assert len(messages) == 3  # two, two and one
    assert all(len(msg.data) < two + 300 for msg in messages)  # the batch's envelope adds a little
    assert unpacked(messages) == results


async def test_a_batch_sent_again_is_stored_once(bus: Bus) -> None:
    """A worker that resends after a lost ack (the same results, in the same order) does not
    store them twice: the batch id follows from the results' ids."""
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    results = [passing("t1"), passing("t2")]

    for _ in range(2):
        await asyncio.gather(*(sender.send(result) for result in results))

    assert len(await stored(bus)) == 1


async def test_a_refused_publish_fails_every_sender_of_the_batch(bus: Bus) -> None:
    sender = ResultSender(bus.pipeline, "cy.nowhere.tester")  # no stream stores this subject

    outcomes = await asyncio.gather(
        *(sender.send(passing(f"t{n}")) for n in range(3)), return_exceptions=True
    )

    assert [type(outcome) for outcome in outcomes] == [PublishError] * 3
    assert "no stream" in str(outcomes[0])


async def test_a_cancelled_sender_leaves_the_others_to_finish(bus: Bus) -> None:
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    waiting = [asyncio.create_task(sender.send(passing(f"t{n}"))) for n in range(3)]
    await asyncio.sleep(0)  # all three queued, the flush not yet run
    waiting[0].cancel()

    outcomes = await asyncio.gather(*waiting, return_exceptions=True)

    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert outcomes[1:] == [None, None]
    # The cancelled one was already on its way: stored too (the coordinator ignores a result
    # for work it no longer waits for, and the worker did not ack that work item).
    assert [result.task_id for result in unpacked(await stored(bus))] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("size", [1, 3])
async def test_a_closed_connection_fails_the_senders(bus: Bus, size: int) -> None:
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    await bus.nc.close()

    outcomes = await asyncio.gather(
        *(sender.send(passing(f"t{n}")) for n in range(size)), return_exceptions=True
    )

    assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes


@pytest.mark.parametrize(
    "over",
    [
        -20,  # passes nats-py's check of the payload, not the server's of payload and headers
        1,  # over max_payload itself
    ],
)
async def test_a_result_too_big_for_one_message_fails_alone(bus: Bus, over: int) -> None:
    sender = ResultSender(bus.pipeline, result_subject("tester"))
    small = passing("t0")
    filler = bus.nc.max_payload - len(encode(small)) + over
    huge = passing("t1", output="x" * (len(small.output) + filler))
    assert len(encode(huge)) == bus.nc.max_payload + over

    outcomes = await asyncio.gather(
        sender.send(small), sender.send(huge), sender.send(passing("t2")), return_exceptions=True
    )

    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], ResultTooLarge)
    assert str(outcomes[1]).startswith(f"the result is {bus.nc.max_payload + over} bytes")
    assert [result.task_id for result in unpacked(await stored(bus))] == ["t0", "t2"]
    assert bus.nc.is_connected  # the server was never sent more than it takes


async def test_a_publish_failing_fails_only_its_own_message(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results flushed in the same turn as several messages: one refused before it left fails
    its own senders only; the others' results are stored, and their senders told so."""
    results = [passing(f"t{n}", output="x" * 1000) for n in range(3)]
    sender = ResultSender(bus.pipeline, result_subject("tester"), max_bytes=1)  # one a message
    publish = bus.pipeline.publish

    async def refuse_the_second(subject: str, payload: bytes, headers: dict[str, str]) -> Pending:
        if payload == encode(results[1]):
            raise ConnectionError("refused")
        return await publish(subject, payload, headers)

    monkeypatch.setattr(bus.pipeline, "publish", refuse_the_second)
    outcomes = await asyncio.gather(*map(sender.send, results), return_exceptions=True)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ConnectionError)
    assert outcomes[2] is None
    assert [result.task_id for result in unpacked(await stored(bus))] == ["t0", "t2"]
