"""A worker's results on their way to the coordinator, several to a message when they finish
together.

Each stored message costs a publish, its ack, a delivery and the coordinator's ack, whatever
it carries. A worker running many handlers at once (no-op or fast roles, a scaled-out tester)
finishes several in the same turn of the event loop; those go out as one `ResultBatch`. Nothing
waits for company: the results queued when the sender next runs (the following turn) are what
is sent, so a lone result leaves as soon as it would have alone, as a plain `Result`.

A sender's `send` returns only once JetStream stored the message holding its result, so the
caller may ack the work item then, exactly as with a publish of its own. A result too big for
one message (`ResultTooLarge`) or that the coordinator would refuse (`ResultInvalid`) is refused
by `send` before it is queued, and each message's senders learn that message's outcome alone:
a publish failing does not fail results that other messages of the same turn stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import msgspec

from codeyard.bus.connection import MSG_ID_HEADER
from codeyard.bus.pipeline import Pending, PublishPipeline
from codeyard.cancellation import in_background
from codeyard.schemas.codec import MAX_MESSAGE_BYTES, MessageError, decode, encode
from codeyard.schemas.messages import Result, ResultBatch

# Well under NATS' 1 MiB payload limit: a batch is one delivery and one decode, and a smaller
# one leaves the coordinator's step sooner.
MAX_BATCH_BYTES = 256 * 1024

# Of the server's max_payload, what a result may not use: the server counts the headers
# (Nats-Msg-Id, about 60 bytes) against the limit, and closes the connection of a client that
# goes over it (nats-py checks the payload alone); a batch adds its envelope (about 220 bytes).
ENVELOPE_ROOM = 1024


class ResultInvalid(ValueError):
    """A result its receiver would refuse (a field over its schema's limits, say): stored, it
    would be dead-lettered by the coordinator and its task would wait for it forever."""


class ResultTooLarge(ValueError):
    """A result bigger than one NATS message may be: sent again it would be just as big."""

    def __init__(self, size: int, limit: int, max_payload: int) -> None:
        bound = (
            f"the server's max_payload of {max_payload} bytes"
            if max_payload <= MAX_MESSAGE_BYTES
            else f"the {MAX_MESSAGE_BYTES} bytes a codeyard message may be"
        )
        super().__init__(
            f"the result is {size} bytes encoded, over the {limit} bytes a result may be "
            f"({bound} less {ENVELOPE_ROOM} for headers)"
        )
        self.size = size
        self.limit = limit
        self.max_payload = max_payload

    def remedy(self, smaller: str) -> str:
        """What a person can do about it: `smaller` (how to make the result smaller), or raise
        the server's max_payload when that, not codeyard's own limit, is what the result met."""
        if self.max_payload < MAX_MESSAGE_BYTES:
            return (
                f"raise the NATS server's max_payload (up to {MAX_MESSAGE_BYTES} bytes, the most "
                f"a codeyard message may be), or {smaller}"
            )
        return f"{smaller} ({MAX_MESSAGE_BYTES} bytes is the most a codeyard message may be)"


@dataclass(frozen=True)
class _Queued:
    msg_id: str
    payload: bytes
    stored: asyncio.Future[None]


def batch_msg_id(msg_ids: list[str]) -> str:
    """A batch's id follows from its results' ids: the same batch sent again (its publish timed
    out but landed) is stored once by JetStream's duplicate window."""
    return hashlib.sha256(",".join(msg_ids).encode()).hexdigest()[:32]


class ResultSender:
    """Stores results on `subject`, those sent in the same turn as few messages as fit."""

    def __init__(
        self,
        pipeline: PublishPipeline,
        subject: str,
        *,
        max_bytes: int = MAX_BATCH_BYTES,
        timeout: float = 5.0,
    ) -> None:
        self._pipeline = pipeline
        self._subject = subject
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._queued: list[_Queued] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def send(self, result: Result) -> None:
        """Store `result` in the results stream; raises what the publish raised (`PublishError`,
        `TimeoutError`, `ConnectionError`), after which it may or may not be stored, or
        `ResultTooLarge` or `ResultInvalid` at once, nothing sent."""
        try:
            payload = encode(result)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            # A lone surrogate in some text, a value of a type JSON has no form for (a Path, a
            # numpy int: Structs do not check types when built), an int past 64 bits: the
            # handler's doing, so the same again on every delivery, not the bus's.
            raise ResultInvalid(f"a {type(result).__name__} that cannot be encoded: {exc}") from exc
        limit = self._limit()
        if len(payload) > limit:
            raise ResultTooLarge(len(payload), limit, self._pipeline.max_payload)
        try:  # what the coordinator will check (encoding does not validate)
            decode(payload, type(result))
        except MessageError as exc:
            raise ResultInvalid(
                f"a {type(result).__name__} the coordinator would refuse: {exc}"
            ) from exc
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append(_Queued(result.msg_id, payload, stored))
        if len(self._queued) == 1:  # the first of this turn: the flush runs in the next one
            in_background(self._flushing, self._flush())
        await stored

    def _limit(self) -> int:
        """The most bytes a result, or a batch's results, may take (read each time: the server
        a reconnect lands on may allow a different max_payload). Never over what the streams
        store and the coordinator decodes, whatever the server allows."""
        return min(self._pipeline.max_payload, MAX_MESSAGE_BYTES) - ENVELOPE_ROOM

    async def _flush(self) -> None:
        queued, self._queued = self._queued, []
        try:
            sent: list[tuple[list[_Queued], Pending]] = []
            for group in self._groups(queued):
                try:
                    sent.append((group, await self._publish(group)))
                except Exception as exc:  # this message only: earlier ones may be stored already
                    _settle_all(group, exc)
            outcomes = await self._pipeline.wait([pending for _, pending in sent], self._timeout)
            for (group, _), outcome in zip(sent, outcomes, strict=True):
                _settle_all(group, outcome if isinstance(outcome, BaseException) else None)
        finally:  # whatever ended the flush early, no sender waits forever
            _settle_all(queued, ConnectionError("the results' flush ended before their acks"))

    async def _publish(self, group: list[_Queued]) -> Pending:
        payload, msg_id = self._message(group)
        return await self._pipeline.publish(self._subject, payload, {MSG_ID_HEADER: msg_id})

    def _groups(self, queued: list[_Queued]) -> Iterator[list[_Queued]]:
        """Consecutive results up to `max_bytes` a group, and never over what one message may
        carry (a bigger one goes alone)."""
        limit = self._limit()
        group: list[_Queued] = []
        size = 0
        for item in queued:
            grown = size + len(item.payload)
            # against the limit, the commas between results count too
            if group and (grown > self._max_bytes or grown + len(group) > limit):
                yield group
                group, grown = [], len(item.payload)
            group.append(item)
            size = grown
        if group:
            yield group

    @staticmethod
    def _message(group: list[_Queued]) -> tuple[bytes, str]:
        if len(group) == 1:
            return group[0].payload, group[0].msg_id
        msg_id = batch_msg_id([item.msg_id for item in group])
        # The results are encoded already: msgspec writes `Raw` values into the batch as they
        # are, so nothing is encoded twice.
        raw = tuple(msgspec.Raw(item.payload) for item in group)
        batch = ResultBatch(results=cast(tuple[Result, ...], raw), msg_id=msg_id, trace_id=msg_id)
        return encode(batch), msg_id


def _settle_all(items: list[_Queued], error: BaseException | None) -> None:
    """Tell the senders of `items` their outcome, unless they were told already."""
    for item in items:
        if item.stored.done():  # settled before, or its sender was cancelled and left
            continue
        if error is None:
            item.stored.set_result(None)
        else:
            item.stored.set_exception(error)
