"""A continuous pull consumer: pull requests kept outstanding, each message handed over the
moment it arrives.

nats-py's `fetch(n)` returns only once `n` messages arrived or the request expired, so a
half-full batch waits out the timeout: up to a second per hop on a quiet system. This keeps
requests open (like nats.go's `Consume`) and delivers messages one by one, so the latency is
the server's and the throughput is that of large batches.

How many messages the server still owes (`outstanding`) is kept as one sum, as nats.go does:
messages keep their stream subject, so they cannot name the request they fill, and the server
does not fill requests in order (it hands messages to its waiting requests in turn).

    on sending a request for n                 outstanding += n
    on a message                               outstanding -= 1
    on a request's status: it was owed p       outstanding -= p   (Nats-Pending-Messages)
    on a request's status without that count   outstanding -= n   (see below)
    on a request's deadline passing            outstanding -= 0   (it was filled)
    on a reconnect                             outstanding  = 0   (every request forgotten)

Invariant: 0 <= outstanding <= asked, the sum of n over the requests still tracked: what the
server owes them cannot exceed what they asked for, and with none tracked it is 0. Every step
is exact on a healthy connection but two, and each errs in a bounded way:

- A status without a count ended a request that was refused before it waited (consumer
  missing, too many waiting requests: owed all n, exact) or cut short (consumer deleted,
  leader changed: owed at most n). Subtracting n can only undercount, by what the request had
  received; the clamp at 0 absorbs it as the messages really owed arrive. The owner meanwhile
  asks for a few messages too many (`PullWorker` hands such extra back), and never for fewer.
- A request whose status never comes is forgotten at its deadline owing 0 (right for a filled
  request: the server ends those without a status), overcounting by what it was still owed.
  No status is lost on a healthy connection (one lost with the connection is covered by the
  reconnect), and such an overcount does not last: `asked` falls to 0 within a deadline of
  the last request sent, as when an owner stops asking because the overcount fills its window.
  (Charging each message to the oldest request, dropped once charged in full though the server
  still owed it, stranded counts for good: a worker's concurrency shrank with every one.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from codeyard.bus.permissions import JS_API

log = logging.getLogger(__name__)

# Every status on a request's reply subject ends that request, but the idle heartbeat (100).
# nats-server (2.10 to 2.15) sends: 408 expired, with the count it still owed; 409 with that
# count when a message exceeds the request's max_bytes or its batch completed under it; 409
# without it when the consumer was deleted, its leader changed, too many requests wait, or
# a request limit was exceeded; 503 "no responders" when the consumer does not exist (yet):
# the request never reached one; and 400, 404, 412, 423 to requests we never send (malformed,
# no_wait, API level, pinned priority groups).
HEARTBEAT = "100"
PENDING_MESSAGES = "Nats-Pending-Messages"
# A request ended without that count was refused (or cut short): asking again at once would
# be refused again, in a loop as fast as the round trip. Requests are not sent for this long,
# then the owner is asked to ask again. Short next to a request's expiry, so a worker started
# before its consumer exists serves about this soon after the consumer is created.
REFUSED_PAUSE = 1.0


# A message's ack subject in nats-server's first form: $JS.ACK.<stream>.<consumer>.<delivered>.
# <stream seq>.<consumer seq>.<timestamp>.<pending>.
_ACK_V1_TOKENS = 9


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered `msg`, read from its ack subject. nats-py's
    `metadata` builds two dataclasses and a datetime for it, ten times as long, for every
    item a worker takes. A subject of another form (a JetStream domain) is left to nats-py."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == _ACK_V1_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4])
    return msg.metadata.num_delivered


@dataclass
class _Request:
    count: int
    deadline: float  # the server ended it well before: it expired or was filled


class PullConsumer:
    """Keeps what its owner asks for outstanding on a durable pull consumer; `deliver` gets
    each message as it comes. The owner reads `outstanding` to decide how many to ask for,
    calls `forget_expired` before deciding, `forget_all` after a reconnect, and looks again
    when `on_ask_again` is called."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        deliver: Callable[[Msg], None],
        *,
        expires: float = 10.0,
        js_api: str = JS_API,
    ) -> None:
        self._nc = nc
        self._next_subject = f"{js_api}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._deliver = deliver
        self._expires = expires
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._requests: dict[str, _Request] = {}
        self._asked = 0  # the sum of the counts in _requests
        self._counter = 0
        self._pause: asyncio.TimerHandle | None = None  # set while refused: see REFUSED_PAUSE
        self.outstanding = 0  # messages the server still owes (see the invariant above)
        # called when asking again may get more: a request ended, a pause after a refusal is
        # over, or a reconnect forgot every request
        self.on_ask_again: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def stop(self) -> None:
        self._end_pause()
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def request(self, count: int) -> bool:
        """Ask the server for `count` more messages (delivered as they become available).

        Returns False if nothing was sent: while disconnected (nats-py would buffer the request
        and send it on reconnect, after `forget_all` forgot it: the server would then deliver
        it on top of what is asked anew), while paused after a refusal (`on_ask_again` is
        called after either), or when nats-py refused it (its buffer full: ask again later)."""
        if count <= 0 or self._subscription is None:
            return False
        if not self._nc.is_connected or self._pause is not None:
            return False
        self._counter += 1
        token = str(self._counter)
        # counted before the publish, which may yield to the reader before it returns
        deadline = time.monotonic() + 2 * self._expires + 1.0
        self._requests[token] = _Request(count, deadline)
        self._asked += count
        self.outstanding += count
        body = {"batch": count, "expires": int(self._expires * 1e9)}
        try:
            await self._nc.publish(
                self._next_subject, msgspec.json.encode(body), reply=f"{self._inbox}.{token}"
            )
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not ask %s for messages: %r", self._next_subject, exc)
            self._untrack(token, count)  # never sent: take back all it counted
            return False
        return True

    def forget_expired(self) -> None:
        """Forget requests past their deadline; call it before deciding how many messages to
        request. The server ended each long before: a request it filled gets no status, and
        is owed nothing. The deadline is the request's expiry twice over plus a second, so a
        408 read late (the event loop stalled) still finds its request and its count."""
        now = time.monotonic()
        # Requests are kept in the order they were sent, all with the same expiry: the first
        # not past its deadline ends the search (filled requests stay until theirs).
        expired = []
        for token, request in self._requests.items():
            if request.deadline >= now:
                break
            expired.append(token)
        for token in expired:
            self._untrack(token, 0)

    def forget_all(self) -> None:
        """Forget every request: after a reconnect the server may hold none of them (a restarted
        server lost them), and waiting for their deadline would idle the consumer meanwhile. A
        request the server did keep delivers on top of what is asked anew; a 408 for it finds
        no request and changes nothing."""
        self._requests.clear()
        self._asked = 0
        self.outstanding = 0
        self._end_pause()  # a refusal from before the reconnect says nothing now
        self.on_ask_again()

    def _untrack(self, token: str, owed: int | None) -> _Request | None:
        """Stop tracking request `token`, which was still owed `owed` messages (None: unknown,
        then at most its count, which is what is subtracted: see the module docstring)."""
        request = self._requests.pop(token, None)
        if request is not None:
            self._asked -= request.count
            unfilled = request.count if owed is None else min(max(owed, 0), request.count)
            self.outstanding -= unfilled
            self.outstanding = min(max(self.outstanding, 0), self._asked)  # the invariant
        return request

    def _ended(self, token: str, owed: int | None) -> None:
        if self._untrack(token, owed) is None:
            return  # forgotten before (deadline, reconnect): its count left with it
        if owed is None:  # refused or cut short: see REFUSED_PAUSE
            self._start_pause()
        else:
            self.on_ask_again()

    def _start_pause(self) -> None:
        if self._pause is None:
            self._pause = asyncio.get_running_loop().call_later(REFUSED_PAUSE, self._pause_over)

    def _pause_over(self) -> None:
        self._pause = None
        self.on_ask_again()

    def _end_pause(self) -> None:
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None

    async def _on_message(self, msg: Msg) -> None:
        # A status comes on its request's reply subject, a stored message on its stream
        # subject: anyone who may publish work can give one an empty body and a Status header,
        # and taken for a status it would be neither delivered nor acked, but come back after
        # every ack_wait, counted as still owed until its request ends.
        on_inbox = msg.subject.startswith(f"{self._inbox}.")
        status = msg.headers.get("Status") if on_inbox and msg.headers and not msg.data else None
        if status is None:
            self.outstanding = max(self.outstanding - 1, 0)
            self._deliver(msg)
        elif status[:3] != HEARTBEAT:
            # a status comes on the reply subject of the request it ends
            self._ended(msg.subject[len(self._inbox) + 1 :], _owed(msg))


def _owed(status: Msg) -> int | None:
    """What the server still owed the request this status ended, if it said."""
    value = status.headers.get(PENDING_MESSAGES) if status.headers else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
