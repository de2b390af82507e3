"""Pipelined JetStream publishes: a message over the server's limit fails alone."""

from __future__ import annotations

import pytest

from codeyard.bus import Bus
from codeyard.bus.connection import MSG_ID_HEADER
from codeyard.bus.pipeline import PublishError


async def test_a_message_over_max_payload_with_its_headers_is_refused_and_the_rest_goes_on(
    bus: Bus,
) -> None:
    pipeline = bus.pipeline
    headers = {MSG_ID_HEADER: "x" * 32}
    # within max_payload by itself, over it with its headers: the server would drop the
    # connection, and every publish waiting on it would fail
    payload = b"x" * (pipeline.max_payload - 20)
    waiting = await pipeline.publish("cy.events.big", b"{}", {MSG_ID_HEADER: "y" * 32})

    with pytest.raises(PublishError, match="max_payload"):
        await pipeline.publish("cy.events.big", payload, headers)

    [stored] = await pipeline.wait([waiting], 5)
    assert not isinstance(stored, BaseException)
    assert bus.connected
