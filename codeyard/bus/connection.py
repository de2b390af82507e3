"""`Bus`: the one object through which codeyard processes talk to NATS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from codeyard.bus import permissions, subjects
from codeyard.bus.credentials import JS_API_VARIABLE, Credentials, in_url, shown_url
from codeyard.bus.direct_publish import DirectPublisher
from codeyard.bus.pipeline import Pending, PubAck, PublishPipeline
from codeyard.bus.store import VersionedStore
from codeyard.bus.topology import Topology, ensure_topology
from codeyard.schemas.codec import MessageError, decode, encode
from codeyard.schemas.envelope import Envelope
from codeyard.schemas.messages import RunEvent

log = logging.getLogger(__name__)


LOGIN_HINT = (
    "Without NATS_URL, codeyard logs in with the credentials `codeyard up` wrote under its "
    "CODEYARD_DATA_DIR (use the same one); with NATS_URL, set CODEYARD_NATS_CREDENTIALS_DIR (or "
    "CODEYARD_NATS_USER and CODEYARD_NATS_PASSWORD)"
)


class LoginRefused(nats.errors.NoServersError):
    """The server answered, and refused our login (no credentials, or wrong ones): nats-py
    tells that to its error callback only, and gives up with `NoServersError` as if nothing
    had answered."""

    def __init__(self, url: str, user: str | None, reason: str) -> None:
        who = f"as {user!r}" if user else "without credentials"
        self.message = f"NATS at {shown_url(url)} refused the login {who}: {reason}"
        super().__init__(self.message)

    def __str__(self) -> str:  # (NoServersError's is a fixed text)
        return self.message


T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
E = TypeVar("E", bound=Envelope)

MSG_ID_HEADER = "Nats-Msg-Id"
# A server that stops answering without closing the connection (its host froze, a network cut)
# is noticed after this many seconds times (MAX_OUTSTANDING_PINGS + 1): 40 s, where nats-py's
# defaults (120 s, 2) took 6 minutes of a worker pulling nothing or a coordinator unable to
# lead, before it reconnected (to another node of a cluster, if there is one).
PING_INTERVAL = 10.0
MAX_OUTSTANDING_PINGS = 3


def js_api_hint(refusal: str, credentials: Credentials | None) -> str:
    """What to check when a worker was refused a subject of JetStream's API: the name its
    account gives the API (see `permissions.WORKER_JS_API`), or ""."""
    if credentials is None or permissions.role_of_principal(credentials.user) is None:
        return ""
    refused = refusal.lower()
    js_api = credentials.js_api or permissions.JS_API
    if js_api == permissions.JS_API and f'"{permissions.JS_API.lower()}.' in refused:
        return (
            f" (in a deployment with an account per worker, its JetStream API is "
            f"{permissions.WORKER_JS_API}: set {JS_API_VARIABLE}, which `codeyard deploy "
            "nats-config` writes in the worker's env file)"
        )
    if js_api != permissions.JS_API and f'"{js_api.lower()}.' in refused:
        return (
            f" ({JS_API_VARIABLE}={js_api} is for a deployment with an account per worker; "
            "this server's users share one: unset it)"
        )
    return ""


class Bus:
    """A NATS connection with JetStream, speaking codeyard's typed messages.

    JetStream publishes carry the message's `msg_id` as `Nats-Msg-Id`, so a publish retried after a
    crash or a lost ack is stored once (within the stream's duplicate window).

    `grants` are the permissions of the user it connected as, when that user is one of
    codeyard's principals (`codeyard.bus.permissions`); None means unknown or no authentication,
    and then everything is tried. Subjects of JetStream's API are named under `js_api`, as the
    user's account has it (`through`).
    """

    def __init__(
        self,
        nc: Client,
        topology: Topology,
        grants: permissions.Grants | None = None,
        js_api: str = permissions.JS_API,
    ):
        self.nc = nc
        self.js_api = js_api  # where JetStream's API is (see `permissions.WORKER_JS_API`)
        self.js: JetStreamContext = nc.jetstream(prefix=js_api)
        self.topology = topology
        self.grants = grants
        self.publisher = DirectPublisher(nc)  # also acks JetStream messages (`ack`)
        self.pipeline = PublishPipeline(nc, self.publisher)
        # called after each reconnect (consumers ask for messages anew)
        self.reconnected: list[Callable[[], None]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "codeyard",
        credentials: Credentials | None = None,
        topology: Topology | None = None,
        connect_timeout: int = 2,
        connect_attempts: int = 20,
        ping_interval: float = PING_INTERVAL,
        quiet: bool = False,
    ) -> Bus:
        """Connect, trying `connect_attempts` times (0.25 s apart) before giving up with
        `nats.errors.NoServersError`; once connected, reconnect forever.

        With `credentials` the connection authenticates and uses the user's own inbox prefix
        (`_INBOX.<user>`), the only inboxes its permissions let it read.

        `quiet`: a command's connection, whose caller tells the user in one line what failed.
        nats-py reports each failed attempt to connect (or reconnect) on its own; those are
        logged at debug rather than as warnings, which a service's log keeps."""
        other_errors = logging.DEBUG if quiet else logging.WARNING

        refusals: list[str] = []  # of the login, while connecting

        async def on_error(exc: Exception) -> None:
            if "authorization violation" in str(exc).lower() and not nc.is_connected:
                refusals.append(str(exc).strip())
            if "permissions violation" in str(exc).lower():
                # the operation waiting on it fails with a timeout; this says why
                user = credentials.user if credentials else "us"
                log.error("NATS refused %s: %s%s", user, exc, js_api_hint(str(exc), credentials))
            else:
                log.log(other_errors, "nats error: %s", exc)

        buses: list[Bus] = []  # the one made below, for the callbacks

        async def on_disconnect() -> None:
            if not (nc.is_closed or nc.is_draining):
                log.warning("disconnected from nats, reconnecting")
            for bus in buses:
                bus.pipeline.abandon("the connection to nats dropped before the publish ack")

        async def on_reconnect() -> None:
            log.info("reconnected to nats")
            for bus in buses:
                for listener in list(bus.reconnected):
                    listener()

        nc = Client()
        # Credentials in the URL are nats-py's to send, but the inbox prefix is ours to set:
        # without the user's, its permissions refused every reply (a status after 12 s of
        # silence, a run submitted and its answer lost).
        credentials = credentials or in_url(url)
        user = credentials.user if credentials else None
        try:
            await nc.connect(
                # (a cluster's servers, separated by commas as in the nats CLI's NATS_URL)
                [server.strip() for server in url.split(",")],
                name=name,
                user=user,
                password=credentials.password if credentials else None,
                inbox_prefix=permissions.inbox_prefix(user) if user else permissions.INBOX_ROOT,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=connect_attempts,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds; floats work
                ping_interval=ping_interval,  # type: ignore[arg-type]  # seconds; floats work
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except nats.errors.NoServersError:
            if refusals:
                raise LoginRefused(url, user, refusals[-1]) from None
            raise
        nc.options["max_reconnect_attempts"] = -1  # nats-py has no separate setting for this
        grants = None
        js_api = (credentials.js_api if credentials else "") or permissions.JS_API
        if credentials is not None:
            with contextlib.suppress(permissions.UnknownPrincipal):
                grants = permissions.grants_through(
                    permissions.grants_for(credentials.user), js_api
                )
        bus = cls(nc, topology or Topology(), grants, js_api)
        buses.append(bus)
        return bus

    def may_publish(self, subject: str) -> bool:
        """False only when this user is known not to be allowed to publish on `subject`."""
        return self.grants is None or self.grants.may_publish(subject)

    async def setup(self, roles: Iterable[str] = subjects.BUILTIN_ROLES) -> None:
        """Create or update the streams, consumers and buckets. Needs the topology grants (the
        coordinator's, or no authentication); workers only ever look up their consumer."""
        await ensure_topology(self.js, self.topology, roles)

    @property
    def connected(self) -> bool:
        """False while the connection to NATS is down (and being retried) or closed."""
        return bool(self.nc.is_connected)

    async def sync(self, timeout: int = 5) -> None:
        """Return once the server has read everything sent on this connection so far: a
        subscription made before is then in place for requests from every other connection.

        `nc.flush()` alone does not promise that: nats-py (2.16) writes its PING straight to the
        socket, ahead of what its flusher task has not written yet, so the PONG can come back
        before the server read a subscription made just before (under load, other connections'
        requests then met "no responders" for a moment). Waiting for the flusher first puts the
        PING behind everything. `TimeoutError` if the server did not answer in `timeout` s."""
        async with asyncio.timeout(timeout):
            while self.nc.pending_data_size and self.nc.is_connected:  # noqa: ASYNC110 - nats-py
                # signals nothing when its buffer is written
                await asyncio.sleep(0.001)
        await self.nc.flush(timeout)

    async def close(self) -> None:
        """Drain (subscriptions finish what they hold, publishes are flushed), then close; with
        the connection down there is nothing to drain into (nats-py refuses), so only close."""
        if self.nc.is_closed:
            return
        if self.connected:
            await self.nc.drain()
            return
        # Closing writes out what was buffered meanwhile, onto the dead socket: that fails (an
        # OSError, or uvloop's RuntimeError for a closed transport), and no other way could
        # send it either.
        with contextlib.suppress(OSError, RuntimeError):
            await self.nc.close()

    # --- JetStream -----------------------------------------------------------------------------

    async def publish(self, subject: str, message: Envelope, timeout: float = 5.0) -> PubAck:
        """Store `message` durably; returns once the stream has it."""
        [ack] = await self.publish_many([(subject, message)], timeout)
        return ack

    async def publish_many(
        self, items: Sequence[tuple[str, Envelope]], timeout: float = 10.0
    ) -> list[PubAck]:
        """Pipelined publishes: all sent at once, then every ack awaited; raises the first
        failure (`PublishError`, or `TimeoutError` when the server did not answer)."""
        pending = [await self.send(subject, message) for subject, message in items]
        return await self.pipeline.all_stored(pending, timeout)

    async def send(self, subject: str, message: Envelope) -> Pending:
        """Start storing `message` (its `msg_id` as `Nats-Msg-Id`); `pipeline.wait` or
        `pipeline.all_stored` tell how it went."""
        headers = {MSG_ID_HEADER: message.msg_id}
        return await self.pipeline.publish(subject, encode(message), headers)

    async def emit(self, event: RunEvent) -> PubAck:
        """Append an event to its run's events stream."""
        return await self.publish(subjects.events_subject(event.run_id), event)

    async def store(self, bucket: str, type_: type[S]) -> VersionedStore[S]:
        return VersionedStore(self.js, await self.js.key_value(bucket), bucket, type_)

    # --- core request/reply --------------------------------------------------------------------

    @overload
    async def request(
        self, subject: str, message: Envelope, reply_type: type[T], timeout: float = 5.0
    ) -> T: ...
    @overload
    async def request(
        self, subject: str, message: Envelope, reply_type: Any, timeout: float = 5.0
    ) -> Any: ...
    async def request(
        self, subject: str, message: Envelope, reply_type: Any, timeout: float = 5.0
    ) -> Any:
        """Core request/reply; `reply_type` is a message class or a union such as ControlReply."""
        reply = await self.nc.request(subject, encode(message), timeout=timeout)
        return decode(reply.data, reply_type)

    async def serve(
        self,
        subject: str,
        request_type: type[T] | Any,
        handler: Callable[[T], Awaitable[Envelope]],
        on_error: Callable[[Exception], Envelope],
        queue: str = "",
    ) -> Subscription:
        """Answer requests on `subject`. A bad request or a failing handler gets `on_error`'s
        reply; the subscription keeps serving."""

        async def answer(msg: Msg) -> None:
            try:
                reply = await handler(decode(msg.data, request_type))
            except MessageError as exc:
                reply = on_error(exc)
            except Exception as exc:
                log.exception("handler for %s failed", subject)
                reply = on_error(exc)
            if msg.reply:
                await msg.respond(encode(reply))

        return await self.nc.subscribe(subject, queue=queue, cb=answer)
