"""Fixtures shared by every test: one real nats-server per session, a clean bus per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.errors import ServerError

from codeyard.bus import Bus, EmbeddedNats, Topology
from codeyard.sandbox import BwrapSandbox, SandboxUnavailable

# Short enough that redelivery tests finish quickly, long enough for a loaded 2-core machine.
TEST_TOPOLOGY = Topology(ack_wait=2.0, leader_ttl=2.0)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    # Tied to pytest's main thread: a test run killed (a CI timeout, Ctrl-C twice) left it
    # running for good.
    with EmbeddedNats(tmp_path_factory.mktemp("nats"), tied_to_parent=True) as server:
        yield server


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    """A connected bus over freshly created streams and buckets (previous tests' data wiped)."""
    bus = await Bus.connect(nats_server.url, name="test", topology=TEST_TOPOLOGY)
    for stream in await bus.js.streams_info():
        await bus.js.delete_stream(stream.config.name or "")
    for attempt in range(20):
        try:
            await bus.setup()
            break
        except ServerError as exc:
            # 10049: the server is still removing the deleted stream's files (seen once in CI)
            if exc.err_code != 10049 or attempt == 19:
                raise
            await asyncio.sleep(0.1)
    yield bus
    await bus.close()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def bwrap_sandbox() -> BwrapSandbox:
    """The bubblewrap sandbox, checked to work here; tests needing it skip with the reason."""
    try:
        sandbox = BwrapSandbox()
        sandbox.probe()
    except SandboxUnavailable as exc:
        pytest.skip(f"bwrap sandbox unavailable here: {exc}")
    return sandbox
