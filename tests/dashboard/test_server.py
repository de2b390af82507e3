"""The dashboard over HTTP: a real server, a real NATS and an in-process coordinator."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from codeyard.bus import Bus, PullWorker
from codeyard.bus.connection import MSG_ID_HEADER
from codeyard.bus.subjects import EVENT_STREAM, events_subject
from codeyard.coordinator.run_store import RunStore
from codeyard.coordinator.service import Coordinator
from codeyard.dashboard import pages
from codeyard.dashboard.auth import SESSION_SECONDS, TokenCheck, cookie_name
from codeyard.dashboard.server import Dashboard, serving
from codeyard.schemas import (
    ApprovalList,
    Approve,
    CodeResult,
    ListApprovals,
    Patch,
    Progress,
    Result,
    Run,
    RunState,
    SubmitRun,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    WorkItem,
    decode,
    encode,
)
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, offload
from codeyard.workspace.snapshots import artifact_store
from tests.coordinator.harness import ask, status
from tests.coordinator.test_control_api import coordinator

__all__ = ["coordinator"]  # the fixture, shared with the control API's tests

TOKEN = "t0ken-for-the-dashboard-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SESSION = TokenCheck(TOKEN).session()


def cookie_of(url: str) -> str:
    """The name of the sign-in cookie of the dashboard at `url`."""
    port = URL(url).port
    assert port is not None
    return cookie_name(port)


@pytest.fixture
async def dashboard(bus: Bus, coordinator: Coordinator) -> AsyncIterator[str]:
    async with serving(Dashboard(bus, TOKEN), "127.0.0.1", 0) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def submit_waiting_plan(bus: Bus, run_id: str) -> str:
    plan = [TaskSpec(id="x", title="models"), TaskSpec(id="y", title="api", deps=["x"])]
    await ask(bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=plan, approve_plan=True))
    approvals = await ask(bus, "approvals", ListApprovals())
    assert isinstance(approvals, ApprovalList)
    [pending] = [a for a in approvals.approvals if a.run_id == run_id]
    return pending.approval_id


async def test_every_page_needs_the_token(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    await submit_waiting_plan(bus, "r1")
    paths = ["/", "/runs/r1", "/runs/r1/tasks/x", "/runs/r1/events", "/approvals"]
    paths.append("/static/live.js")
    for path in paths:
        async with http.get(dashboard + path) as nothing:
            assert nothing.status == 401, path
            assert nothing.headers["WWW-Authenticate"] == 'Bearer realm="codeyard"'
        async with http.get(dashboard + path, headers={"Authorization": "Bearer nope"}) as wrong:
            assert wrong.status == 401, path
        async with http.get(dashboard + path, cookies={cookie_of(dashboard): "no"}) as forged:
            assert forged.status == 401, path
    async with http.get(dashboard + "/?token=nope") as bad_link:
        assert bad_link.status == 401
    async with http.post(dashboard + "/approvals/abc/approve") as post:
        assert post.status == 401

    async with http.get(dashboard + "/", headers=BEARER) as runs:
        assert runs.status == 200
        page = await runs.text()
    assert '<a href="/runs/r1">r1</a>' in page
    assert "script-src 'self'" in runs.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in runs.headers["Content-Security-Policy"]
    assert "frame-ancestors" not in page  # ignored in a page, with a warning
    async with http.get(dashboard + "/runs/nosuch", headers=BEARER) as unknown:
        assert unknown.status == 404
    async with http.get(dashboard + "/runs/nosuch/events", headers=BEARER) as no_events:
        assert no_events.status == 404


async def status_line(url: str, request: bytes) -> bytes:
    """The status line of the answer to `request`, sent as these very bytes (a client library
    would not send bytes that are not UTF-8)."""
    address = URL(url)
    assert address.host is not None
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


def post(headers: bytes, form: bytes) -> bytes:
    return (
        b"POST /approvals/abc/deny HTTP/1.1\r\nHost: dashboard\r\n"
        + headers
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )


async def test_what_is_not_utf8_is_refused_not_an_error(bus: Bus) -> None:
    """aiohttp hands over a header's bytes that are not UTF-8 as lone surrogates, which could
    not be encoded to compare them with the token, and raises decoding such a form: each of
    these requests was a 500, with a traceback in the log."""
    cookie, bearer = b"Cookie: %s=%s\r\n", b"Authorization: Bearer %s\r\n"
    async with serving(Dashboard(bus, TOKEN), "127.0.0.1", 0) as url:
        name = cookie_of(url).encode()
        for header in (cookie % (name, b"\xff\xfe"), bearer % b"\xff"):
            get = b"GET / HTTP/1.1\r\nHost: dashboard\r\n" + header + b"\r\n"
            assert await status_line(url, get) == b"HTTP/1.1 401 Unauthorized\r\n"
        signed_in = cookie % (name, SESSION.encode())
        no_csrf = await status_line(url, post(signed_in, b"csrf=\xff"))
        assert no_csrf == b"HTTP/1.1 403 Forbidden\r\n"
        unreadable = await status_line(url, post(bearer % TOKEN.encode(), b"comment=\xff"))
        assert unreadable == b"HTTP/1.1 400 Bad Request\r\n"


async def test_a_request_it_cannot_parse_leaves_no_token_in_the_log(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logged the line it refused, token and all: a pasted link with a space after the
    token, a header with a stray byte, a URL over 8 KiB."""
    caplog.set_level(logging.DEBUG)
    token = TOKEN.encode()
    refused = [
        b"GET /?token=%s x HTTP/1.1\r\nHost: d\r\n\r\n" % token,
        b"GET / HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer %s\x01\r\n\r\n" % token,
        b"GET /?token=%s&pad=%s HTTP/1.1\r\nHost: d\r\n\r\n" % (token, b"x" * 9000),
    ]
    async with serving(Dashboard(bus, TOKEN), "127.0.0.1", 0) as url:
        for request in refused:
            assert b" 400 Bad Request" in await status_line(url, request)
    assert TOKEN not in caplog.text
    assert caplog.text.count("refused a request that is not HTTP it can read") == 3


@pytest.mark.parametrize(
    ("content_type", "form"),
    [
        (b"multipart/form-data", b"--x\r\nfoo"),  # no boundary
        (b"multipart/form-data; boundary=zz", b"garbage"),
        (b"application/x-www-form-urlencoded; charset=bogus-xx", b"comment=x"),
        (b"text/plain", b"comment=x"),
    ],
)
async def test_a_form_it_cannot_read_is_a_bad_request(
    dashboard: str, content_type: bytes, form: bytes
) -> None:
    """Each was a 500 with a traceback; signed in with the cookie, from another site too."""
    request = (
        b"POST /approvals/abc/deny HTTP/1.1\r\nHost: dashboard\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (TOKEN.encode(), content_type, len(form), form)
    )
    assert await status_line(dashboard, request) == b"HTTP/1.1 400 Bad Request\r\n"
    elsewhere = (
        b"POST /approvals/abc/deny HTTP/1.1\r\nHost: dashboard\r\n"
        b"Origin: http://127.0.0.1:1\r\nCookie: %s=%s\r\n"
        b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (cookie_of(dashboard).encode(), SESSION.encode(), content_type, len(form), form)
    )
    assert await status_line(dashboard, elsewhere) == b"HTTP/1.1 403 Forbidden\r\n"


async def test_a_comment_too_long_to_record_is_refused_saying_so(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    approval_id = await submit_waiting_plan(bus, "r1")
    form = {"comment": "\x01" * 340_000}  # 2 MB as JSON: over NATS's largest message
    async with http.post(
        f"{dashboard}/approvals/{approval_id}/deny", data=form, headers=BEARER
    ) as r:
        assert r.status == 400
        assert "the comment is longer than 20,000 characters" in await r.text()
    approvals = await ask(bus, "approvals", ListApprovals())
    assert isinstance(approvals, ApprovalList)
    assert [a.approval_id for a in approvals.approvals] == [approval_id]  # still asked


async def test_the_link_with_the_token_signs_in_with_a_cookie(
    dashboard: str, bus: Bus, coordinator: Coordinator
) -> None:
    await submit_waiting_plan(bus, "r2")
    # unsafe: accept cookies from an IP address, as browsers do
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(dashboard + f"/runs/r2?token={TOKEN}") as signed_in:
            assert signed_in.status == 200
            assert signed_in.url.path == "/runs/r2"
            assert "token" not in signed_in.url.query  # dropped from the address bar
            assert [r.status for r in signed_in.history] == [303]
            cookie = signed_in.history[0].headers["Set-Cookie"]
            page = await signed_in.text()
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
        assert '<g class="node" data-task="x"' in page
        async with browser.get(dashboard + "/runs/r2/tasks/y") as task:  # the cookie suffices
            assert task.status == 200
            assert "Task y: api" in await task.text()


async def test_the_token_posted_to_the_sign_in_page_signs_in_and_no_url_holds_it(
    dashboard: str, bus: Bus, coordinator: Coordinator
) -> None:
    """The printed link carries the token in its fragment, which the browser keeps: its
    script posts it here. In a query string (`/?token=`), a proxy's access log kept it."""
    await submit_waiting_plan(bus, "r12")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(dashboard + "/signin") as form:  # before signing in
            assert form.status == 200
            page = await form.text()
        assert '<form id="signin" method="post" action="/signin">' in page
        assert '<script src="/static/signin.js" defer></script>' in page
        async with browser.get(dashboard + "/static/signin.js") as script:
            assert script.status == 200
            assert "window.location.hash" in await script.text()

        wrong = {"token": "not-the-token-at-all"}
        async with browser.post(dashboard + "/signin", data=wrong) as refused:
            assert refused.status == 401
            assert "not this dashboard&#x27;s token" in await refused.text()
        async with browser.get(dashboard + "/runs/r12") as still_out:
            assert still_out.status == 401

        elsewhere = {"Origin": "https://evil.example"}
        async with browser.post(
            dashboard + "/signin", data={"token": TOKEN}, headers=elsewhere
        ) as forged:
            assert forged.status == 403

        async with browser.post(dashboard + "/signin", data={"token": TOKEN}) as signed_in:
            assert signed_in.status == 200
            assert signed_in.url.path == "/"
            assert [r.status for r in signed_in.history] == [303]
            assert "HttpOnly" in signed_in.history[0].headers["Set-Cookie"]
            assert all(TOKEN not in str(r.url) for r in (*signed_in.history, signed_in))
        async with browser.get(dashboard + "/runs/r12") as page_after:
            assert page_after.status == 200


@asynccontextmanager
async def another_local_service(seen: list[str]) -> AsyncIterator[str]:
    """Some other web service on 127.0.0.1 (a dev server, say): notes the Cookie header of
    each request it gets; yields its base URL."""

    async def note(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie", ""))
        return web.Response(text="another service")

    app = web.Application()
    app.router.add_get("/", note)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def browser_jar() -> aiohttp.ClientSession:
    """A client keeping cookies as a browser does: per host, whatever the port (unsafe:
    accepts them from an IP address, as browsers do)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_the_sign_in_cookie_is_named_after_the_port_and_is_not_the_token(
    dashboard: str, http: aiohttp.ClientSession
) -> None:
    seen: list[str] = []
    async with browser_jar() as browser, another_local_service(seen) as elsewhere:
        async with browser.get(dashboard + f"/?token={TOKEN}") as signed_in:
            assert signed_in.status == 200
        [cookie] = browser.cookie_jar
        async with browser.get(elsewhere + "/") as other:
            assert other.status == 200
    assert cookie.key == cookie_of(dashboard)
    assert cookie.key.endswith(f"_{URL(dashboard).port}")
    assert TokenCheck(TOKEN).session_ok(cookie.value)
    assert cookie["max-age"] == str(SESSION_SECONDS)
    assert TOKEN not in cookie.value
    assert cookie["path"] == "/"
    assert [cookie.key in header and TOKEN not in header for header in seen] == [True]

    # what another service saw opens nothing but the cookie's own way in
    session = {"Authorization": f"Bearer {cookie.value}"}
    async with http.get(dashboard + "/", headers=session) as as_bearer:
        assert as_bearer.status == 401
    async with http.get(dashboard + f"/?token={cookie.value}") as as_link:
        assert as_link.status == 401
    async with http.get(dashboard + "/", cookies={cookie.key: TOKEN}) as token_as_cookie:
        assert token_as_cookie.status == 401
    async with http.get(dashboard + "/", cookies={cookie.key: cookie.value}) as as_cookie:
        assert as_cookie.status == 200


async def test_two_dashboards_on_one_host_keep_their_own_sign_in(dashboard: str, bus: Bus) -> None:
    other_token = "an0ther-token-for-a-second-dashboard"
    async with (
        serving(Dashboard(bus, other_token), "127.0.0.1", 0) as second,
        browser_jar() as browser,
    ):
        for url, token in ((dashboard, TOKEN), (second, other_token)):
            async with browser.get(url + f"/?token={token}") as signed_in:
                assert signed_in.status == 200
        for url in (dashboard, second):  # neither sign-in replaced the other
            async with browser.get(url + "/") as page:
                assert page.status == 200, url
        names = {cookie.key for cookie in browser.cookie_jar}
    assert names == {cookie_of(dashboard), cookie_of(second)}


async def test_approving_from_the_dashboard_sends_approve(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    approval_id = await submit_waiting_plan(bus, "r3")
    async with http.get(dashboard + "/approvals", headers=BEARER) as listed:
        page = await listed.text()
    assert f'action="/approvals/{approval_id}/approve"' in page

    async with http.post(
        dashboard + f"/approvals/{approval_id}/approve", headers=BEARER, allow_redirects=False
    ) as approved:
        assert approved.status == 303
        assert approved.headers["Location"] == "/approvals"
    assert (await status(bus, "r3")).state is RunState.EXECUTING
    async with http.get(dashboard + "/approvals", headers=BEARER) as after:
        assert approval_id not in await after.text()
    async with http.post(
        dashboard + f"/approvals/{approval_id}/deny", headers=BEARER, allow_redirects=False
    ) as again:
        assert again.status == 409  # answered already: the coordinator's error is shown
        assert "already approved by dashboard" in await again.text()


async def test_behind_a_proxy_that_names_who_signed_in_answers_are_theirs(
    http: aiohttp.ClientSession, bus: Bus, coordinator: Coordinator
) -> None:
    """Every answer was recorded as by "dashboard", whoever gave it: a team could not tell
    who approved what. An answer that does not say who gives it is refused, not recorded."""
    approval_id = await submit_waiting_plan(bus, "r5")
    dashboard = Dashboard(bus, TOKEN, user_header="X-Forwarded-User")
    async with serving(dashboard, "127.0.0.1", 0) as url:
        approve, deny = (url + f"/approvals/{approval_id}/{verb}" for verb in ("approve", "deny"))
        async with http.post(approve, headers=BEARER, allow_redirects=False) as nobody:
            assert nobody.status == 403
            assert "no X-Forwarded-User" in await nobody.text()
        assert (await status(bus, "r5")).state is RunState.PLAN_APPROVAL
        alice = BEARER | {"X-Forwarded-User": "alice@example.com"}
        async with http.post(approve, headers=alice, allow_redirects=False) as approved:
            assert approved.status == 303
        bob = BEARER | {"X-Forwarded-User": "bob"}
        async with http.post(deny, headers=bob, allow_redirects=False) as late:
            assert late.status == 409
            assert "already approved by alice@example.com" in await late.text()


async def test_a_cookie_post_needs_the_csrf_token_and_the_same_origin(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    approval_id = await submit_waiting_plan(bus, "r4")
    url = dashboard + f"/approvals/{approval_id}/deny"
    csrf = TokenCheck(TOKEN).csrf
    cookies = {cookie_of(dashboard): SESSION}
    async with http.post(url, cookies=cookies, allow_redirects=False) as missing:
        assert missing.status == 403
    async with http.post(
        url,
        cookies=cookies,
        data={"csrf": csrf},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    ) as elsewhere:
        assert elsewhere.status == 403
    assert (await status(bus, "r4")).state is RunState.PLAN_APPROVAL  # nothing was answered
    async with http.post(
        url,
        cookies=cookies,
        data={"csrf": csrf, "comment": "too broad"},
        headers={"Origin": dashboard},
        allow_redirects=False,
    ) as denied:
        assert denied.status == 303
    run = await status(bus, "r4")
    assert run.state is RunState.CANCELLED
    assert "too broad" in run.error


async def test_behind_a_reverse_proxy_a_post_from_the_public_origin_is_answered(
    http: aiohttp.ClientSession, bus: Bus, coordinator: Coordinator
) -> None:
    """A TLS proxy (Caddy, nginx) hands the dashboard plain HTTP: the browser's Origin is the
    proxy's https origin, never the dashboard's own."""
    public = ["https://Codeyard.Example.com:443", "http://10.0.0.5:8080"]
    dashboard = Dashboard(bus, TOKEN, public_origins=public)
    async with serving(dashboard, "127.0.0.1", 0) as url:
        approval_id = await submit_waiting_plan(bus, "r7")

        async def deny(origin: str) -> int:
            async with http.post(
                url + f"/approvals/{approval_id}/deny",
                cookies={cookie_of(url): SESSION},
                data={"csrf": TokenCheck(TOKEN).csrf},
                # the Host a proxy that keeps it (as Caddy does) passes on
                headers={"Origin": origin, "Host": "codeyard.example.com"},
                allow_redirects=False,
            ) as answer:
                return answer.status

        # neither a public origin nor the Host the dashboard was asked for: another port of
        # the same host, another site
        for elsewhere in (
            "https://codeyard.example.com:8443",
            "http://codeyard.example.com:8080",
            "https://codeyard.example.com.evil.example",
            "null",
        ):
            assert await deny(elsewhere) == 403, elsewhere
        assert (await status(bus, "r7")).state is RunState.PLAN_APPROVAL
        assert await deny("https://CODEYARD.example.com") == 303
    assert (await status(bus, "r7")).state is RunState.CANCELLED


async def test_behind_tls_the_sign_in_cookie_is_never_sent_in_the_clear(
    http: aiohttp.ClientSession, bus: Bus
) -> None:
    """Behind a TLS proxy the cookie lacked `Secure`: one plain http visit (a proxy redirecting
    http to https, say) sent it in the clear, and it signs in until the token changes."""

    async def cookie(url: str, headers: dict[str, str] | None = None) -> str:
        async with http.get(
            url + f"/?token={TOKEN}", headers=headers, allow_redirects=False
        ) as signed_in:
            assert signed_in.status == 303
            return signed_in.headers["Set-Cookie"]

    async with serving(Dashboard(bus, TOKEN), "127.0.0.1", 0) as url:
        assert "Secure" in await cookie(url, {"X-Forwarded-Proto": "https"})
        assert "Secure" not in await cookie(url)
    public = ["https://codeyard.example.com"]
    async with serving(Dashboard(bus, TOKEN, public_origins=public), "127.0.0.1", 0) as url:
        assert "Secure" in await cookie(url)


async def test_signing_in_sends_the_browser_nowhere_but_this_dashboard(
    dashboard: str, http: aiohttp.ClientSession
) -> None:
    """`//evil.example/?token=...` was sent on to `//evil.example/`, another host's address."""
    for path in ("//evil.example/", "/\\evil.example/"):  # (sent as written: not quoted)
        link = URL(dashboard + f"{path}?token={TOKEN}", encoded=True)
        async with http.get(link, allow_redirects=False) as signed_in:
            assert signed_in.status == 303
            assert signed_in.headers["Location"] == "/", path


async def test_a_public_origin_must_be_an_origin(bus: Bus) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        Dashboard(bus, TOKEN, public_origins=["https://codeyard.example.com/dashboard"])


async def test_events_relay_task_state_changes_as_they_happen(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    approval_id = await submit_waiting_plan(bus, "r5")
    async with http.get(dashboard + "/runs/r5/events", headers=BEARER) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        # approved only now: the coding transition happens while the stream is open
        await ask(bus, "approve", Approve(approval_id=approval_id))
        changes = await asyncio.wait_for(read_task_changes(stream, "x", TaskState.CODING), 20)
    assert changes


@asynccontextmanager
async def client_that_never_reads(url: str, path: str) -> AsyncIterator[socket.socket]:
    """A connection that asks for `path` and then reads nothing, with a small receive buffer
    so that the server soon has to hold what it sends."""
    address = URL(url)
    assert address.host is not None
    assert address.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (address.host, address.port))
        request = f"GET {path} HTTP/1.1\r\nHost: dashboard\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        yield sock
    finally:
        sock.close()


def dropped(sock: socket.socket) -> bool:
    """Whether the server closed the connection (it aborts it: a reset), seen without reading
    what it sent."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP | select.POLLERR)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


async def read_progress_until(stream: aiohttp.ClientResponse, last: str) -> int:
    """How many Progress events the stream delivered up to the one saying `last`."""
    count = 0
    name = ""
    async for raw in stream.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "Progress":
            count += 1
            if decode(line.removeprefix("data: ").encode(), Progress).message == last:
                return count
    raise AssertionError(f"the stream ended before the event {last!r}")


async def test_a_client_that_stops_reading_is_dropped_while_another_keeps_receiving(
    http: aiohttp.ClientSession, bus: Bus, coordinator: Coordinator
) -> None:
    """Each client's events wait in a queue of at most `stream_buffer`: one that does not read
    is dropped once it stays full (it was an unbounded queue: the server held every event of
    the run for it), and a client that reads gets every event meanwhile."""
    dashboard = Dashboard(bus, TOKEN, stream_buffer=4, stream_patience=2.0)
    # 7.6 MB: far more than the queue, aiohttp's buffer and the sockets' (the kernel grows
    # the server's send buffer to a few MB) hold together
    events = [Progress(run_id="r8", role="coder", message="x" * 19_000) for _ in range(400)]
    events.append(Progress(run_id="r8", role="coder", message="last"))
    async with serving(dashboard, "127.0.0.1", 0) as url:
        await submit_waiting_plan(bus, "r8")
        async with (
            client_that_never_reads(url, "/runs/r8/events") as stuck,
            http.get(url + "/runs/r8/events", headers=BEARER) as reading,
        ):
            assert reading.status == 200
            received = asyncio.create_task(read_progress_until(reading, "last"))
            await bus.publish_many([(events_subject("r8"), event) for event in events])
            assert await asyncio.wait_for(received, 60) == len(events)
            for _ in range(600):
                if dropped(stuck):
                    break
                await asyncio.sleep(0.05)
            assert dropped(stuck), "the client that reads nothing was never dropped"


async def test_a_large_patch_is_read_from_the_object_store(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    big = "".join(f"+line {n} of a large change\n" for n in range(INLINE_PATCH_CHARS // 20))
    store = await artifact_store(bus.js)

    async def code(item: WorkItem) -> Result:
        # stored as an older coder did (this test's coordinator has no store to do it)
        return CodeResult(patch=await offload(store, Patch(text=big)))

    stop = asyncio.Event()
    coder = asyncio.create_task(PullWorker(bus, "coder", code).run(stop))
    try:
        await ask(
            bus, "submit", SubmitRun(run_id="r6", goal="g", plan=[TaskSpec(id="x", title="x")])
        )
        for _ in range(200):  # no tester serves: the task stays in testing with its patch
            task = (await status(bus, "r6")).tasks["x"]
            if task.state is TaskState.TESTING:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(coder, 10)
    assert task.patch is not None
    assert task.patch.object_name  # travelled by reference
    assert not task.patch.text

    async with http.get(dashboard + "/runs/r6/tasks/x", headers=BEARER) as page:
        assert page.status == 200
        html = await page.text()
    assert "+line 3275 of a large change" in html  # the last line
    assert "too large to carry inline" not in html


async def read_task_changes(
    stream: aiohttp.ClientResponse, task_id: str, state: TaskState
) -> list[TaskStatesChanged]:
    """TaskStatesChanged frames until one moves `task_id` to `state`."""
    seen: list[TaskStatesChanged] = []
    name = ""
    async for raw in stream.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "TaskStatesChanged":
            event = decode(line.removeprefix("data: ").encode(), TaskStatesChanged)
            seen.append(event)
            if any(c.task_id == task_id and c.state is state for c in event.changes):
                return seen
    raise AssertionError(f"the stream ended before {task_id} was {state}")


async def test_an_event_published_again_is_relayed_once(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    """A coordinator that loads a run publishes its last step's events again, under their ids:
    a copy the events stream took (published after its duplicate window) is not shown twice."""
    await submit_waiting_plan(bus, "r9")
    said = Progress(run_id="r9", role="coder", message="said once")
    async with http.get(dashboard + "/runs/r9/events", headers=BEARER) as stream:
        received = asyncio.create_task(read_progress_until(stream, "last"))
        for copy in ("first", "again"):  # stored twice: under two Nats-Msg-Ids
            await bus.js.publish(events_subject("r9"), encode(said), headers={MSG_ID_HEADER: copy})
        await bus.publish(events_subject("r9"), Progress(run_id="r9", role="coder", message="last"))
        assert await asyncio.wait_for(received, 20) == 2  # "said once", then "last"


async def test_a_run_too_big_for_one_status_reply_has_its_pages(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    """Its page, its tasks' pages and its events were "no run" (404): it is read in pages."""
    plan = [TaskSpec(id=f"t{i}", title="x") for i in range(5000)]
    await ask(bus, "submit", SubmitRun(run_id="huge", goal="g", plan=plan, approve_plan=True))
    for path in ("/runs/huge", "/runs/huge/tasks/t4999"):
        async with http.get(dashboard + path, headers=BEARER) as page:
            assert page.status == 200, path
            assert "t4999" in await page.text()


async def test_head_of_the_events_answers_without_holding_a_stream(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus
) -> None:
    """HEAD (a health check) used to get the events' body, and a consumer for each until the
    next keepalive."""
    await submit_waiting_plan(bus, "r10")
    before = (await bus.js.stream_info(EVENT_STREAM)).state.consumer_count
    async with http.head(dashboard + "/runs/r10/events", headers=BEARER) as head:
        assert head.status == 200
        assert head.headers["Content-Type"].startswith("text/event-stream")
        assert (await bus.js.stream_info(EVENT_STREAM)).state.consumer_count == before
    async with http.head(dashboard + "/runs/nope/events", headers=BEARER) as unknown:
        assert unknown.status == 404


async def test_a_run_page_is_drawn_off_the_event_loop(
    dashboard: str, http: aiohttp.ClientSession, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of 10,000 tasks takes a second to draw: on the loop, it held up every page and
    live update of every client meanwhile."""
    drawn_on: list[threading.Thread] = []

    def run_page(run: Run) -> str:
        drawn_on.append(threading.current_thread())
        return f"<p>{run.run_id}</p>"

    monkeypatch.setattr(pages, "run_page", run_page)
    await submit_waiting_plan(bus, "r11")
    async with http.get(dashboard + "/runs/r11", headers=BEARER) as page:
        assert page.status == 200
        assert await page.text() == "<p>r11</p>"
    [thread] = drawn_on
    assert thread is not threading.main_thread()  # the loop's


async def test_the_runs_list_says_when_the_coordinator_cannot_list_them(
    dashboard: str, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "no runs yet" instead."""

    async def failing(store: RunStore) -> list[Run]:
        raise OSError("the store is away")

    monkeypatch.setattr(RunStore, "headers", failing)
    async with http.get(dashboard + "/", headers=BEARER) as page:
        assert page.status == 502
        body = await page.text()
    assert "Runs unavailable" in body
    assert "the store is away" in body
    assert "no runs yet" not in body
