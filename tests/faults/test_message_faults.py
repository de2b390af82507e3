"""Malformed and oversized messages injected mid-run, on a work subject and on a result subject:
each malformed one becomes a DeadLetter event naming the problem, the oversized one never gets
on the bus, and the run completes untouched."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import nats.errors
import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import (
    COORDINATOR_CONSUMER,
    DEAD_LETTER_RUN,
    WORK_STREAM,
    consumer_name,
    result_subject,
    work_subject,
)
from codeyard.schemas import DeadLetter
from codeyard.schemas.codec import MAX_MESSAGE_BYTES
from tests.coordinator.harness import processes, run_events, submit
from tests.faults.harness import (
    assert_recovered,
    dead_letters,
    fault,
    plan,
    wait_mid_run,
    worker_options,
)


def json(value: dict[str, object]) -> bytes:
    return msgspec.json.encode(value)


def malformed_work(run_id: str) -> dict[bytes, str]:
    """Payloads for cy.work.coder, and what their dead letter's error must say."""
    return {
        b"{not json": "malformed JSON",
        json({"type": "NoSuchRequest", "run_id": run_id}): "unknown message type 'NoSuchRequest'",
        json({"type": "CodeRequest", "run_id": run_id, "task_id": "t0", "attempt": 1}): (
            "missing required field `goal`"
        ),
        # the largest message the bus takes (see the oversized one below): stored, not decodable
        b"x" * MAX_MESSAGE_BYTES: "malformed JSON",
    }


# The result of a batch that cannot be read is filed alone (the others of the batch applied).
UNREADABLE_RESULT = json({"type": "CodeResult"})
BATCH_OF_AN_UNREADABLE_RESULT = b'{"type": "ResultBatch", "results": [%s]}' % UNREADABLE_RESULT
FILED_AS = {BATCH_OF_AN_UNREADABLE_RESULT: UNREADABLE_RESULT}


def malformed_results(run_id: str) -> dict[bytes, str]:
    """Payloads for cy.result.coder, and what their dead letter's error must say."""
    return {
        b'{"type": "CodeResult", "patch": ': "malformed JSON",
        json({"type": "NoSuchResult", "run_id": run_id}): "unknown message type 'NoSuchResult'",
        json({"type": "CodeResult", "run_id": run_id, "task_id": "t0", "attempt": 1}): (
            "missing required field `patch`"
        ),
        json({"type": "ResultBatch", "results": []}): "length >= 1",
        BATCH_OF_AN_UNREADABLE_RESULT: "missing required field `patch`",
    }


def letter_for(letters: list[DeadLetter], subject: str, payload: bytes) -> DeadLetter:
    shown = payload[:4096].decode(errors="replace")
    [letter] = [x for x in letters if (x.subject, x.payload) == (subject, shown)]
    return letter


async def all_dead_letters(bus: Bus, run_id: str, expected: int) -> list[DeadLetter]:
    """The dead letters of the run and the unrouted ones (those without a readable run id),
    once `expected` of them are recorded (workers record them while serving other work)."""
    deadline = time.monotonic() + 30
    while True:
        letters = dead_letters(await run_events(bus, run_id))
        letters += dead_letters(await run_events(bus, DEAD_LETTER_RUN))
        if len(letters) >= expected or time.monotonic() > deadline:
            return letters
        await asyncio.sleep(0.2)


async def test_malformed_and_oversized_messages_are_dead_lettered_and_the_run_completes(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    specs = plan(seed=25)
    log = tmp_path / "work.log"
    # No gap between the bus's limits and codeyard's: the server refuses a payload over 1 MiB
    # (max_payload) and the work stream one over MAX_MESSAGE_BYTES, so codec.decode's own size
    # check is a second line of defence no message can reach through this server.
    assert bus.nc.max_payload == MAX_MESSAGE_BYTES
    assert (await bus.js.stream_info(WORK_STREAM)).config.max_msg_size == MAX_MESSAGE_BYTES
    with fault("malformed and oversized messages") as recovery:
        async with processes(nats_server.url) as children:
            await children.coordinator("coord-a")
            for _ in range(2):
                await children.worker(*worker_options(log))
            run_id = await submit(bus, specs)

            work, results = malformed_work(run_id), malformed_results(run_id)
            recovery.inject(await wait_mid_run(bus, run_id))
            for payload in work:
                await bus.js.publish(work_subject("coder"), payload)
            for payload in results:
                await bus.js.publish(result_subject("coder"), payload)
            with pytest.raises(nats.errors.MaxPayloadError):
                await bus.js.publish(work_subject("coder"), b"x" * (MAX_MESSAGE_BYTES + 1))
            run = await recovery.wait(bus, run_id)

        await assert_recovered(bus, run_id, run, specs)
        assert not recovery.finished_twice(log)

        # Each malformed message is one DeadLetter event saying what was wrong with it, from
        # the consumer that met it; routed to the run's events when its run id was readable.
        letters = await all_dead_letters(bus, run_id, len(work) + len(results))
        assert len(letters) == len(work) + len(results)
        for subject, consumer, expected in (
            (work_subject("coder"), consumer_name("coder"), work),
            (result_subject("coder"), COORDINATOR_CONSUMER, results),
        ):
            for published, error in expected.items():
                payload = FILED_AS.get(published, published)
                letter = letter_for(letters, subject, payload)
                assert error in letter.error, letter.error
                assert letter.consumer == consumer
                assert letter.payload_bytes == len(payload)
        routed = {letter.run_id for letter in letters if letter.subject == work_subject("coder")}
        assert routed == {"", run_id}  # the ones with a run id went to the run's events
