"""Work no one can decode is dead-lettered and acked, however it was made to hurt: handed to
the coordinator on the worker's result subject, within the bounds a dead letter event keeps,
and the work behind it is served."""

from __future__ import annotations

from codeyard.bus import Bus, PullWorker
from codeyard.bus.subjects import work_subject
from codeyard.bus.worker import DEAD_LETTER_PAYLOAD_LIMIT
from codeyard.schemas import UndecodableWork
from codeyard.schemas.model import LONG_TEXT_CHARS
from tests.bus.results import collect_answers
from tests.bus.test_worker import code_request, echo, serving, settled, until

# msgspec recurses once per level of nesting, past its limit raising RecursionError
TOO_DEEP = 20_000


async def served_past(
    bus: Bus, *payloads: bytes, headers: dict[str, str] | None = None
) -> list[UndecodableWork]:
    """Work stored as `payloads`, then a valid item: the worker serves the item, dead-letters
    every payload on its first delivery and leaves nothing pending. What it handed the
    coordinator for each, as the coordinator reads it."""
    for payload in payloads:
        await bus.js.publish(work_subject("coder"), payload, headers=headers)
    await bus.publish(work_subject("coder"), code_request("t2"))
    worker = PullWorker(bus, "coder", echo())
    async with serving(worker):
        answers = await collect_answers(bus, len(payloads) + 1)
        await until(lambda: worker.stats.dead_lettered == len(payloads))
        info = await settled(bus, "coder")
    [result] = [answer for answer in answers if not isinstance(answer, UndecodableWork)]
    assert result.task_id == "t2"
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    letters = [answer for answer in answers if isinstance(answer, UndecodableWork)]
    for letter in letters:  # what a dead letter event takes
        assert len(letter.error) <= LONG_TEXT_CHARS
        assert len(letter.payload) <= DEAD_LETTER_PAYLOAD_LIMIT
    return letters


async def test_work_nested_too_deeply_to_decode_is_dead_lettered(bus: Bus) -> None:
    run_id_nested = b'{"type":"CodeRequest","run_id":' + b"[" * TOO_DEEP + b"]" * TOO_DEEP + b"}"
    junk_nested = (
        b'{"type":"CodeRequest","run_id":"run7","junk":'
        + b'{"a":' * TOO_DEEP
        + b"1"
        + b"}" * TOO_DEEP
        + b"}"
    )
    run_id_letter, junk_letter = await served_past(bus, run_id_nested, junk_nested)
    assert "Expected `str`, got `array`" in run_id_letter.error
    assert "nested too deeply" in junk_letter.error
    # neither names a run it could be filed with: msgspec cannot get past the junk either
    assert (run_id_letter.run_id, junk_letter.run_id) == ("", "")
    assert junk_letter.payload_bytes == len(junk_nested)


async def test_work_whose_error_quotes_a_huge_value_is_dead_lettered_with_the_error_cut(
    bus: Bus,
) -> None:
    """msgspec quotes an unknown message type whole in its error: a dead letter carrying it
    all was too big to publish (near max_payload), or an event no reader accepts (its error
    over a LongText). Either way the work stayed unacked and came back forever."""
    huge = b'{"type":"' + b"A" * (bus.nc.max_payload - 200) + b'"}'
    long = b'{"type":"' + b"A" * 30_000 + b'","run_id":"run7"}'
    letters = await served_past(bus, huge, long)
    assert [letter.payload_bytes for letter in letters] == [len(huge), len(long)]
    for letter in letters:
        assert letter.error.startswith("unknown message type 'AAAA")
        assert "characters cut]" in letter.error
        assert len(letter.error) <= LONG_TEXT_CHARS
    assert letters[1].run_id == "run7"  # naming its run all the same


async def test_work_with_an_empty_body_and_a_status_header_is_dead_lettered(bus: Bus) -> None:
    """Pull statuses come as empty messages with a Status header, on the worker's own inbox:
    work looking the same was taken for one, never delivered nor acked, coming back after
    every ack_wait and counted as owed meanwhile."""
    [letter] = await served_past(bus, b"", headers={"Status": "408"})
    assert "malformed JSON" in letter.error
    assert letter.payload_bytes == 0
