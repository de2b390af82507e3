"""What `Bus.connect` logs of the errors nats-py reports while it tries a server that is not
there: warnings for a service's log, debug lines for a command (`quiet`), which says in one
line of its own what failed."""

from __future__ import annotations

import logging

import nats.errors
import pytest

from codeyard.bus import Bus
from codeyard.bus.embedded import free_port


async def failed_attempts(caplog: pytest.LogCaptureFixture, *, quiet: bool) -> list[int]:
    """The levels of the `nats error` lines logged while connecting to a port nobody serves."""
    caplog.set_level(logging.DEBUG, logger="codeyard.bus.connection")
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(nats.errors.NoServersError):
        await Bus.connect(url, connect_attempts=3, quiet=quiet)
    return [r.levelno for r in caplog.records if r.getMessage().startswith("nats error:")]


async def test_a_service_connection_warns_of_each_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    levels = await failed_attempts(caplog, quiet=False)
    assert levels
    assert set(levels) == {logging.WARNING}


async def test_a_quiet_connection_keeps_failed_attempts_to_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    levels = await failed_attempts(caplog, quiet=True)
    assert levels  # still there for whoever turns debug logging on
    assert set(levels) == {logging.DEBUG}
