"""A worker's results on their way to the coordinator, several to a message when they finish
together.

Each stored message costs a publish, its ack, a delivery and the coordinator's ack, whatever
it carries. A worker running many handlers at once (no-op or fast roles, a scaled-out tester)
finishes several in the same turn of the event loop; those go out as one `ResultBatch`. Nothing
waits for company: the results queued when the sender next runs (the following turn) are what
is sent, so a lone result leaves as soon as it would have alone, as a plain `Result`.

A sender's `send` returns only once JetStream stored the message holding its result, so the
caller may ack the work item then, exactly as with a publish of its own.
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
from codeyard.schemas.codec import encode
from codeyard.schemas.messages import Result, ResultBatch

# Well under NATS' 1 MiB payload limit: a batch is one delivery and one decode, and a smaller
# one leaves the coordinator's step sooner.
MAX_BATCH_BYTES = 256 * 1024


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
        `TimeoutError`, `ConnectionError`), after which it may or may not be stored."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        self._queued.append(_Queued(result.msg_id, encode(result), stored))
        if len(self._queued) == 1:  # the first of this turn: the flush runs in the next one
            in_background(self._flushing, self._flush())
        await stored

    async def _flush(self) -> None:
        queued, self._queued = self._queued, []
        sent: list[tuple[list[_Queued], Pending]] = []
        try:
            for group in self._groups(queued):
                payload, msg_id = self._message(group)
                pending = await self._pipeline.publish(
                    self._subject, payload, {MSG_ID_HEADER: msg_id}
                )
                sent.append((group, pending))
            outcomes = await self._pipeline.wait([pending for _, pending in sent], self._timeout)
        except Exception as exc:  # the connection failed under the publish: all of them fail
            for item in queued:
                _settle(item.stored, exc)
            return
        for (group, _), outcome in zip(sent, outcomes, strict=True):
            for item in group:
                _settle(item.stored, outcome if isinstance(outcome, BaseException) else None)

    def _groups(self, queued: list[_Queued]) -> Iterator[list[_Queued]]:
        """Consecutive results up to `max_bytes` a group (a bigger one goes alone)."""
        group: list[_Queued] = []
        size = 0
        for item in queued:
            if group and size + len(item.payload) > self._max_bytes:
                yield group
                group, size = [], 0
            group.append(item)
            size += len(item.payload)
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


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its sender was cancelled and no longer waits
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
