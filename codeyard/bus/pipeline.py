"""Pipelined JetStream publishing: send a batch of messages, then wait for all their acks.

nats-py's `publish_async` does the same but spends, per message, a task (for its stall
timeout), random bytes from the OS and a JSON parse; on the coordinator's hot path that was a
third of its time. Here one reply subscription serves every ack, tokens are a counter, acks
are decoded with msgspec, and messages go out through `DirectPublisher`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from codeyard.bus.direct_publish import DirectPublisher

NO_RESPONDERS = "503"


class PublishError(RuntimeError):
    """JetStream refused a publish; `err_code` is the server's JetStream error code."""

    def __init__(self, description: str, err_code: int = 0) -> None:
        super().__init__(description)
        self.err_code = err_code


class MessageTooLarge(PublishError):
    """A message over the server's max_payload, refused before it was sent: sending it again
    can never work."""


class ApiError(msgspec.Struct):
    """The `error` of a JetStream API reply."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


def _header_bytes(headers: dict[str, str] | None) -> int:
    """What the headers add to a message on the wire ("NATS/1.0", "k: v" lines, CRLFs)."""
    if not headers:
        return 0
    return 12 + sum(len(key) + len(value) + 4 for key, value in headers.items())


def _retrieved(future: asyncio.Future[PubAck]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class Pending:
    token: str
    future: asyncio.Future[PubAck]


class PublishPipeline:
    def __init__(self, nc: Client, publisher: DirectPublisher | None = None) -> None:
        self._nc = nc
        self._publisher = publisher or DirectPublisher(nc)
        self._prefix = f"{nc.new_inbox()}."
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._counter = 0
        self._subscription: Subscription | None = None

    @property
    def max_payload(self) -> int:
        """The most bytes, headers included, the server takes in one message."""
        return self._nc.max_payload

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        size = len(payload) + _header_bytes(headers)
        if size > self._nc.max_payload:
            # The server would close the connection (nats-py checks the payload alone), failing
            # every other publish waiting on it; refused here, only this one fails.
            raise MessageTooLarge(
                f"a message of {size} bytes (headers included) is over the server's "
                f"max_payload of {self._nc.max_payload} bytes"
            )
        if self._subscription is None:
            self._subscription = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        self._counter += 1
        token = str(self._counter)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        # A failure nobody waits for (its waiter failed first, or moved on) is not "never
        # retrieved", logged as an error: whoever waits reads it from the future.
        future.add_done_callback(_retrieved)
        self._futures[token] = future
        try:
            await self._publisher.publish(subject, payload, self._prefix + token, headers)
        except BaseException:
            del self._futures[token]  # never sent: no ack will come for it
            raise
        return Pending(token, future)

    async def _on_ack(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(PublishError("no stream listens on this subject"))
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(PublishError(f"unreadable publish ack: {exc}"))
            return
        if ack.error is not None:
            future.set_exception(PublishError(ack.error.description, ack.error.err_code))
        else:
            future.set_result(ack)

    def abandon(self, reason: str) -> None:
        """Fail every publish still waiting for its ack with `ConnectionError(reason)`: once the
        connection dropped, those acks will not come, and waiting out the timeout only delays
        the caller's recovery (the messages may or may not be stored; ids make resends safe)."""
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))

    async def all_stored(self, pending: list[Pending], timeout: float) -> list[PubAck]:
        """Each publish's ack, in order; raises the first failure (`PublishError`, or
        `TimeoutError` when the server did not answer in time)."""
        acks = []
        for outcome in await self.wait(pending, timeout):
            if isinstance(outcome, BaseException):
                raise outcome
            acks.append(outcome)
        return acks

    async def wait(self, pending: list[Pending], timeout: float) -> list[PubAck | BaseException]:
        """Each publish's ack or error, in order; `TimeoutError` for those unanswered in time
        (they may still have been stored)."""
        if len(pending) == 1:  # a worker's result: cheaper than asyncio.wait's set and waiter
            with contextlib.suppress(Exception):  # its outcome is read below
                async with asyncio.timeout(timeout):
                    await pending[0].future
        elif pending:
            await asyncio.wait([p.future for p in pending], timeout=timeout)
        outcomes: list[PubAck | BaseException] = []
        for item in pending:
            if not item.future.done():
                item.future.cancel()
                self._futures.pop(item.token, None)
                outcomes.append(TimeoutError("no publish ack in time"))
            elif item.future.cancelled():  # by the timeout, or by the caller
                self._futures.pop(item.token, None)
                outcomes.append(TimeoutError("publish cancelled"))
            elif (error := item.future.exception()) is not None:
                outcomes.append(error)
            else:
                outcomes.append(item.future.result())
        return outcomes
