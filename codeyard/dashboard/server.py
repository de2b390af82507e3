"""The dashboard's HTTP application (aiohttp) over a bus connected as the `ctl` principal.

Reads come from the coordinator's control API (`cy.ctl.status`, `cy.ctl.approvals`),
answers go back through it (`cy.ctl.approve`, `cy.ctl.deny`), and a run page's live updates
are the run's events, relayed from an ordered consumer on CY_EVENTS as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from codeyard.bus import Bus
from codeyard.bus.subjects import EVENT_STREAM, events_subject
from codeyard.dashboard import pages
from codeyard.dashboard.auth import (
    COOKIE_PREFIX,
    CSRF_FIELD,
    SESSION_SECONDS,
    Proof,
    TokenCheck,
    cookie_name,
    normalised_origins,
    origin_allowed,
)
from codeyard.dashboard.live_script import live_script
from codeyard.dashboard.sign_in import (
    SCRIPT,
    SIGN_IN,
    SIGN_IN_SCRIPT,
    TOKEN_FIELD,
    sign_in_page,
)
from codeyard.dashboard.sse import KEEPALIVE, RETRY, sse_frame
from codeyard.follow import RunRefused, ask_coordinator, existing_run, run_status
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    ControlError,
    ControlReply,
    Deny,
    Envelope,
    ListApprovals,
    MessageError,
    Patch,
    Run,
    RunEvent,
    RunStatus,
    StatusQuery,
    decode,
)
from codeyard.schemas.model import LONG_TEXT_CHARS, SHORT_TEXT_CHARS
from codeyard.workspace.patch_store import PatchMissing, by_reference, inline
from codeyard.workspace.snapshots import artifact_store

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ID = "{%s:[A-Za-z0-9][A-Za-z0-9_-]{0,63}}"  # the wire model's ids: no NATS wildcards or dots
KEEPALIVE_SECONDS = 15.0
FORM_TYPE = "application/x-www-form-urlencoded"  # what the pages' forms send
# Events waiting for one client's stream, and how long they may wait for room when there are
# that many before the client is dropped (it reconnects and gets the run's events again).
STREAM_BUFFER = 256
STREAM_PATIENCE = 10.0
HEADERS = {
    "Content-Security-Policy": pages.CSP,
    "X-Content-Type-Options": "nosniff",
    # the first URL carries the token: never tell another site (and "no-referrer" would make
    # browsers send `Origin: null` on our own forms, failing the CSRF origin check)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Unavailable(Exception):
    """No coordinator answered: the page says so (503)."""


class Feed:
    """The events on their way to one client's stream, at most `size` of them: the server
    holds no more for a client that stops reading (a suspended laptop, a stalled proxy)."""

    def __init__(self, request: web.Request, run_id: str, size: int, patience: float) -> None:
        self.queue: asyncio.Queue[RunEvent] = asyncio.Queue(maxsize=size)
        self.request = request
        self.run_id = run_id
        self.patience = patience
        self.dropped = False
        self._seen: set[str] = set()  # msg ids: a run's last events may be published again

    async def relay(self, msg: Msg) -> None:
        if self.dropped:
            return
        try:
            event = decode(msg.data, RunEvent)
        except MessageError:
            log.warning("skipped an undecodable event of run %s", self.run_id)
            return
        if event.msg_id in self._seen:
            return
        self._seen.add(event.msg_id)
        try:
            # Waiting a while for room rather than dropping the client as soon as the queue is
            # full: NATS hands a run's past events over in bursts that this callback takes in
            # one go, before the stream gets a turn, and a browser that reconnects must not be
            # dropped for that. Meanwhile only this client's consumer waits (flow control).
            async with asyncio.timeout(self.patience):
                await self.queue.put(event)
        except TimeoutError:
            self._drop()

    def _drop(self) -> None:
        self.dropped = True
        log.warning(
            "dropped a client of run %s's events: it took none of %d for %g s",
            self.run_id,
            self.queue.maxsize,
            self.patience,
        )
        if self.request.transport is not None:
            _reset(self.request.transport)


def _reset(transport: asyncio.Transport) -> None:
    """Ends a connection at once, dropping what is still to be sent: aiohttp's buffer (which
    `close` would first send) and the kernel's (a plain close of the socket would have the
    kernel keep trying to deliver it to a client that does not read)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Dashboard:
    def __init__(
        self,
        bus: Bus,
        token: str,
        *,
        patience: float = 10.0,
        answered_by: str = "dashboard",
        user_header: str = "",
        public_origins: Sequence[str] = (),
        stream_buffer: int = STREAM_BUFFER,
        stream_patience: float = STREAM_PATIENCE,
    ) -> None:
        """`public_origins`: where browsers reach the dashboard when that is not where it
        listens (a TLS reverse proxy at https://codeyard.example.com); a POST from there passes
        the CSRF origin check. `ValueError` if one is not an origin. `stream_buffer` events at
        most wait for a client's event stream, and when that many wait `stream_patience`
        seconds for room, the client is dropped. `user_header`: a header that the reverse proxy
        in front sets to who signed in there (`X-Forwarded-User`, say): an answer is recorded as
        theirs, and refused without it; unset, as `answered_by`."""
        self.bus = bus
        self.check = TokenCheck(token)
        self.public_origins = normalised_origins(public_origins)
        self.stream_buffer = stream_buffer
        self.stream_patience = stream_patience
        self.patience = patience
        self.answered_by = answered_by
        self.user_header = user_header
        self.closing = asyncio.Event()  # ends the event streams, which never end by themselves
        self._scripts = {pages.LIVE_SCRIPT: live_script().encode(), SIGN_IN_SCRIPT: SCRIPT.encode()}
        self.cookie = COOKIE_PREFIX  # `serving` names it after the port it listens on

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/", self.runs)
        app.router.add_get(f"/runs/{ID % 'run_id'}", self.run)
        app.router.add_get(f"/runs/{ID % 'run_id'}/events", self.events)
        app.router.add_get(f"/runs/{ID % 'run_id'}/tasks/{ID % 'task_id'}", self.task)
        app.router.add_get("/approvals", self.approvals)
        app.router.add_post(f"/approvals/{ID % 'approval_id'}/{{answer:approve|deny}}", self.answer)
        for path in self._scripts:
            app.router.add_get(path, self.script)
        app.router.add_get(SIGN_IN, self.sign_in_form)
        app.router.add_post(SIGN_IN, self.sign_in)
        app.on_response_prepare.append(_security_headers)
        app.on_shutdown.append(self._close_streams)
        return app

    # --- authentication ---------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in (SIGN_IN, SIGN_IN_SCRIPT):  # where the token is given
            return await handler(request)
        proof = self.check.proof(
            cookie=request.cookies.get(self.cookie),
            authorization=request.headers.get("Authorization"),
            query=request.query.get("token"),
        )
        if proof is Proof.NONE:
            return _html(
                pages.message_page(
                    "Not signed in",
                    "Open the dashboard with the URL that `codeyard dashboard` (or `codeyard up`) "
                    f"printed: it carries the token. Or sign in at {SIGN_IN} with the token.",
                ),
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="codeyard"'},
            )
        if proof is Proof.QUERY and request.method == "GET":
            # trade the token in the URL for a cookie, and drop it from the address bar
            target = str(request.rel_url.without_query_params("token"))
            if target.startswith(("//", "/\\")):  # a browser takes it for another host's
                target = "/"
            return self._signed_in(request, target)
        if proof is Proof.COOKIE and request.method not in ("GET", "HEAD"):
            # The origin first: another site's page must not have its body read at all.
            origin = request.headers.get("Origin")
            origin_ok = origin_allowed(origin, request.host, request.scheme, self.public_origins)
            form = await _form(request) if origin_ok else None
            field = form.get(CSRF_FIELD) if isinstance(form, dict) else None
            if not (origin_ok and self.check.csrf_ok(field)):
                return _html(
                    pages.message_page("Refused", "cross-site request (CSRF check failed)"), 403
                )
        try:
            return await handler(request)
        except Unavailable as exc:
            return _html(pages.message_page("Coordinator unavailable", str(exc)), 503)

    def _signed_in(self, request: web.Request, target: str) -> web.StreamResponse:
        """On to `target` (a path of this dashboard), with the session cookie."""
        response = web.Response(status=303, headers={"Location": target})
        response.set_cookie(
            self.cookie,
            self.check.session(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            path="/",
            secure=self._over_tls(request),
        )
        return response

    async def sign_in_form(self, request: web.Request) -> web.StreamResponse:
        return _html(sign_in_page())

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """The token, posted by the sign-in page, traded for the session cookie."""
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, request.scheme, self.public_origins):
            return _html(pages.message_page("Refused", "a sign-in from another site"), 403)
        form = await _form(request)
        given = form.get(TOKEN_FIELD) if isinstance(form, dict) else None
        if not self.check.matches(given):
            return _html(sign_in_page("That is not this dashboard's token."), 401)
        return self._signed_in(request, "/")

    # --- pages ------------------------------------------------------------------------------

    async def runs(self, request: web.Request) -> web.StreamResponse:
        reply = await self._ask("status", StatusQuery())
        if not isinstance(reply, RunStatus):
            return _html(pages.message_page("Runs unavailable", _error(reply)), 502)
        return _html(pages.runs_page(reply.runs, omitted=reply.omitted))

    async def run(self, request: web.Request) -> web.StreamResponse:
        run = await self._run(request.match_info["run_id"])
        if run is None:
            return _not_found(f"no run {request.match_info['run_id']!r}")
        # in a thread: a run of 10,000 tasks takes a second to draw, which held up every
        # other page and live update
        return _html(await asyncio.to_thread(pages.run_page, run))

    async def task(self, request: web.Request) -> web.StreamResponse:
        run = await self._run(request.match_info["run_id"])
        task = run.tasks.get(request.match_info["task_id"]) if run else None
        if run is None or task is None:
            return _not_found("no such run or task")
        if task.patch is not None and by_reference(task.patch):
            task = msgspec.structs.replace(task, patch=await self._patch_text(task.patch))
        return _html(pages.task_page(run, task))

    async def approvals(self, request: web.Request) -> web.StreamResponse:
        reply = await self._ask("approvals", ListApprovals())
        if not isinstance(reply, ApprovalList):
            return _html(pages.message_page("Approvals unavailable", _error(reply)), 502)
        return _html(pages.approvals_page(reply.approvals, self.check.csrf))

    async def answer(self, request: web.Request) -> web.StreamResponse:
        approval_id = request.match_info["approval_id"]
        form = await _form(request)
        if isinstance(form, str):
            return _html(pages.message_page("Not answered", form), 400)
        by = self._answerer(request)
        if by is None:
            header = self.user_header
            why = f"the proxy in front of the dashboard did not say who you are (no {header})"
            return _html(pages.message_page("Not answered", why), 403)
        note = form.get("comment", "")
        if len(note) > LONG_TEXT_CHARS:
            why = f"the comment is longer than {LONG_TEXT_CHARS:,} characters: shorten it"
            return _html(pages.message_page("Not answered", why), 400)
        answer: Envelope
        if request.match_info["answer"] == "approve":
            answer = Approve(approval_id=approval_id, by=by, comment=note)
            verb = "approve"
        else:
            answer = Deny(approval_id=approval_id, by=by, reason=note)
            verb = "deny"
        reply = await self._ask(verb, answer)
        if not isinstance(reply, Accepted):
            return _html(pages.message_page("Not answered", _error(reply)), 409)
        raise web.HTTPSeeOther("/approvals")

    def _answerer(self, request: web.Request) -> str | None:
        """Who answers: the person `user_header` names (None if it names nobody an answer can
        carry), else `answered_by`."""
        if not self.user_header:
            return self.answered_by
        who = request.headers.get(self.user_header, "").strip()
        # (not UTF-8, aiohttp hands over lone surrogates: not printable)
        if not who or len(who) > SHORT_TEXT_CHARS or not who.isprintable():
            return None
        return who

    async def script(self, request: web.Request) -> web.StreamResponse:
        body = self._scripts[request.path]
        return web.Response(body=body, content_type="text/javascript", charset="utf-8")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The run's events from its first on (a browser that reconnects gets them again and
        ends in the same state), then each as it happens, until the client goes away or falls
        too far behind (`Feed`)."""
        run_id = request.match_info["run_id"]
        if not await self._exists(run_id):
            return _not_found(f"no run {run_id!r}")
        if request.method == "HEAD":  # (a health check, say) no body, and no stream to hold
            return web.Response(headers={"Content-Type": "text/event-stream"})
        feed = Feed(request, run_id, self.stream_buffer, self.stream_patience)
        subscription = await self.bus.js.subscribe(
            events_subject(run_id),
            stream=EVENT_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=feed.relay,
        )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            await response.write(RETRY)
            await self._stream(feed.queue, response)
        except ConnectionError:
            pass  # the browser left, or was dropped
        finally:
            await subscription.unsubscribe()
        return response

    async def _stream(self, queue: asyncio.Queue[RunEvent], response: web.StreamResponse) -> None:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not self.closing.is_set():
            try:
                # short waits, so a closing dashboard ends the stream within a second
                async with asyncio.timeout(1.0):
                    event = await queue.get()
            except TimeoutError:
                if loop.time() - quiet_since > KEEPALIVE_SECONDS:
                    await response.write(KEEPALIVE)  # also finds a browser that left
                    quiet_since = loop.time()
                continue
            await response.write(sse_frame(event))
            quiet_since = loop.time()

    # --- the coordinator --------------------------------------------------------------------

    async def _ask(self, verb: str, request: Envelope) -> ControlReply:
        try:
            return await ask_coordinator(self.bus, verb, request, patience=self.patience)
        except RunRefused as exc:
            raise Unavailable(str(exc)) from None

    async def _exists(self, run_id: str) -> bool:
        """Whether the coordinator knows run `run_id`, asked for its header alone: the whole
        run is megabytes for 10,000 tasks, and each connection of a live view asks."""
        try:
            found = await existing_run(self.bus, run_id, tasks=False, patience=self.patience)
        except RunRefused as exc:
            raise Unavailable(str(exc)) from None
        return found is not None

    async def _run(self, run_id: str) -> Run | None:
        try:
            reply = await run_status(self.bus, run_id, patience=self.patience)
        except RunRefused as exc:
            raise Unavailable(str(exc)) from None
        return reply.runs[0] if isinstance(reply, RunStatus) and reply.runs else None

    async def _patch_text(self, patch: Patch) -> Patch:
        """A large patch with its text from the object store; the reference alone (the page
        then says where the patch is) when it cannot be read."""
        try:
            return await inline(await artifact_store(self.bus.js), patch)
        except (PatchMissing, nats.errors.Error, TimeoutError) as exc:
            log.warning("cannot read patch %s: %s", patch.object_name, exc)
            return patch

    def _over_tls(self, request: web.Request) -> bool:
        """Whether the browser reaches the dashboard over TLS (directly, or through a proxy that
        says so, or all its public origins being https): the sign-in cookie is then never sent
        in the clear (`Secure`), as one plain http visit would."""
        https_origins = bool(self.public_origins) and all(
            origin.startswith("https://") for origin in self.public_origins
        )
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        return request.secure or forwarded == "https" or https_origins

    async def _close_streams(self, app: web.Application) -> None:
        self.closing.set()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=body, status=status, headers=headers, content_type="text/html", charset="utf-8"
    )


def _not_found(message: str) -> web.Response:
    return _html(pages.message_page("Not found", message), 404)


def _error(reply: ControlReply) -> str:
    if isinstance(reply, ControlError):
        return reply.error
    return f"unexpected reply {type(reply).__name__}"


class _UnparsedRequests(logging.Filter):
    """aiohttp logs a request it could not parse with the parser's error, which quotes the line
    it refused: a URL or an `Authorization` header holding the token (one with a stray byte,
    over 8 KiB). Only the kind of error is kept, as a warning without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a request that is not HTTP it can read, from %s: %s"
            record.args = (client, type(error).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_server_log = logging.getLogger(f"{__name__}.http")
_server_log.addFilter(_UnparsedRequests())


@contextlib.asynccontextmanager
async def serving(dashboard: Dashboard, host: str, port: int) -> AsyncIterator[str]:
    """The dashboard listening on host:port (0: any free port); yields its base URL."""
    runner = web.AppRunner(
        dashboard.application(), access_log=None, shutdown_timeout=5.0, logger=_server_log
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        dashboard.cookie = cookie_name(bound_port)
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        yield f"http://{shown}:{bound_port}"
    finally:
        dashboard.closing.set()
        await runner.cleanup()


async def _form(request: web.Request) -> dict[str, str] | str:
    """The text fields of a POSTed form, or what is wrong with it. The dashboard's own forms
    are URL-encoded UTF-8; aiohttp raises reading anything else it cannot decode (a multipart
    body without its boundary, an unknown charset, bytes that are not UTF-8): every such request
    was a 500, with a traceback in the log."""
    if not request.body_exists:
        return {}  # a script's POST with nothing to say
    if request.content_type != FORM_TYPE:
        return f"the form is not {FORM_TYPE}"
    try:
        form = await request.post()
    except (ValueError, LookupError):
        return "the form cannot be read: it is not URL-encoded UTF-8"
    return {name: value for name, value in form.items() if isinstance(value, str)}
