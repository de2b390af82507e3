"""A continuous pull consumer: pull requests kept outstanding, each message handed over the
moment it arrives.

nats-py's `fetch(n)` returns only once `n` messages arrived or the request expired, so a
half-full batch waits out the timeout: up to a second per hop on a quiet system. This keeps
requests open (like nats.go's `Consume`) and delivers messages one by one, so the latency is
the server's and the throughput is that of large batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

# Statuses that end a pull request: 404 no messages, 408 expired, 409 cancelled by the server
# (consumer deleted, leadership change, too many waiting requests).
ENDS_REQUEST = ("404", "408", "409")
PENDING_MESSAGES = "Nats-Pending-Messages"


@dataclass
class _Request:
    remaining: int
    deadline: float


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        deliver: Callable[[Msg], None],
        *,
        expires: float = 10.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._deliver = deliver
        self._expires = expires
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._requests: dict[str, _Request] = {}
        self._counter = 0
        self.outstanding = 0
        self.on_request_end: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def request(self, count: int) -> None:
        """Ask the server for `count` more messages (delivered as they become available)."""
        if count <= 0 or self._subscription is None:
            return
        self._counter += 1
        token = str(self._counter)
        self._requests[token] = _Request(count, time.monotonic() + self._expires + 1.0)
        self.outstanding += count
        body = {"batch": count, "expires": int(self._expires * 1e9)}
        await self._nc.publish(
            self._next_subject, msgspec.json.encode(body), reply=f"{self._inbox}.{token}"
        )

    def forget_expired(self) -> None:
        """Forget requests the server will never answer (it restarted, or we reconnected);
        call it before deciding how many messages to request."""
        now = time.monotonic()
        for token in [t for t, r in self._requests.items() if r.deadline < now]:
            self._end(token)

    def forget_all(self) -> None:
        """Forget every request: after a reconnect the server may hold none of them (a restarted
        server lost them), and waiting for their expiry would idle the consumer meanwhile. A
        request the server did keep only delivers a few messages more than asked for."""
        for token in list(self._requests):
            self._end(token)

    def _end(self, token: str, unfilled: int | None = None) -> None:
        request = self._requests.pop(token, None)
        if request is not None:
            self.outstanding -= request.remaining if unfilled is None else unfilled
            self.outstanding = max(self.outstanding, 0)
            self.on_request_end()

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is not None:
            # status messages come on the request's own inbox subject
            if status[:3] in ENDS_REQUEST:
                unfilled = msg.headers.get(PENDING_MESSAGES) if msg.headers else None
                token = msg.subject[len(self._inbox) + 1 :]
                self._end(token, int(unfilled) if unfilled else None)
            return  # 100: idle heartbeat
        # Messages keep their stream subject, so they cannot name their request; the server
        # fills requests in order, so count them against the oldest.
        self.outstanding = max(self.outstanding - 1, 0)
        for token, request in self._requests.items():
            request.remaining -= 1
            if request.remaining <= 0:
                del self._requests[token]
            break
        self._deliver(msg)
