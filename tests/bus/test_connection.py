"""`Bus.sync`: once it returns, the server has read a subscription made before it, so requests
from other connections find it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.connection import js_api_hint
from codeyard.bus.credentials import Credentials
from codeyard.bus.embedded import free_port
from codeyard.bus.permissions import WORKER_JS_API
from tests.conftest import TEST_TOPOLOGY


class RecordingProxy:
    """A TCP relay to the real server that keeps every byte the client sent, in order."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for relay in (self._relay(reader, up_writer, record=True), self._relay(up_reader, writer)):
            task = asyncio.create_task(relay)
            self._relays.add(task)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    self.sent += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def proxy(nats_server: EmbeddedNats) -> AsyncIterator[RecordingProxy]:
    async with RecordingProxy(nats_server.port) as relay:
        yield relay


async def test_sync_pings_only_after_a_subscription_just_made_was_sent(
    proxy: RecordingProxy,
) -> None:
    bus = await Bus.connect(proxy.url, name="sync", topology=TEST_TOPOLOGY)
    try:

        async def ignore(msg: Msg) -> None:
            pass

        await bus.nc.subscribe("sync.probe", cb=ignore)
        await bus.sync()
        # The PONG that sync waited for answers the last PING sent; the server reads in order.
        sent = bytes(proxy.sent)
        assert b"SUB sync.probe" in sent
        assert sent.rindex(b"SUB sync.probe") < sent.rindex(b"PING\r\n")
    finally:
        await bus.close()


async def test_after_sync_another_connection_is_answered_at_once(
    nats_server: EmbeddedNats,
) -> None:
    server = await Bus.connect(nats_server.url, name="sync-server", topology=TEST_TOPOLOGY)
    client = await Bus.connect(nats_server.url, name="sync-client", topology=TEST_TOPOLOGY)
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        for i in range(50):  # a fresh subject each time: nothing else could answer it
            await server.nc.subscribe(f"sync.echo.{i}", cb=echo)
            await server.sync()
            reply = await client.nc.request(f"sync.echo.{i}", str(i).encode(), timeout=5)
            assert reply.data == str(i).encode()
    finally:
        await server.close()
        await client.close()


async def test_a_cluster_is_named_by_its_servers_separated_by_commas(
    nats_server: EmbeddedNats,
) -> None:
    """As the nats CLI takes NATS_URL: one of them down, the others serve."""
    down = f"nats://127.0.0.1:{free_port()}"
    bus = await Bus.connect(f"{down}, {nats_server.url}", name="cluster", topology=TEST_TOPOLOGY)
    try:
        assert bus.nc.connected_url is not None
        assert bus.nc.connected_url.port == nats_server.port
    finally:
        await bus.close()


def test_a_worker_refused_jetstream_s_api_is_told_which_name_its_account_uses() -> None:
    refused = 'nats: permissions violation for publish to "{}.consumer.info.cy_work.coder"'
    plain = refused.format("$js.api")
    moved = refused.format(WORKER_JS_API.lower())
    assert "set CODEYARD_NATS_JS_API" in js_api_hint(plain, Credentials("coder", "pw"))
    assert "unset it" in js_api_hint(moved, Credentials("coder", "pw", js_api=WORKER_JS_API))
    # right as it is, or a service (whose grants name the API as it is): nothing to add
    assert js_api_hint(moved, Credentials("coder", "pw")) == ""
    assert js_api_hint(plain, Credentials("coordinator", "pw")) == ""
    assert js_api_hint(plain, None) == ""
