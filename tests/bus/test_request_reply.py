"""Typed request/reply: a bad request gets an error reply naming the field; serving goes on."""

from __future__ import annotations

from codeyard.bus import Bus
from codeyard.schemas import (
    Accepted,
    CancelRun,
    Control,
    ControlError,
    ControlReply,
    Envelope,
    MessageError,
    decode,
)


def error_reply(exc: Exception) -> Envelope:
    return ControlError(error=str(exc), field=exc.field if isinstance(exc, MessageError) else "")


async def test_requests_are_answered_and_bad_ones_get_a_named_error(bus: Bus) -> None:
    async def cancel(request: Control) -> Envelope:
        assert isinstance(request, CancelRun)
        if request.run_id == "boom":
            raise RuntimeError("run store unavailable")
        return Accepted(run_id=request.run_id, detail=f"cancelling: {request.reason}")

    await bus.serve("cy.ctl.cancel", Control, cancel, error_reply, queue="coordinator")

    reply = await bus.request("cy.ctl.cancel", CancelRun(run_id="r1"), ControlReply)
    assert reply == Accepted(
        run_id="r1",
        detail="cancelling: cancelled by user",
        msg_id=reply.msg_id,
        trace_id=reply.trace_id,
        sent_at=reply.sent_at,
    )

    raw = await bus.nc.request("cy.ctl.cancel", b'{"type":"CancelRun","attempt":"x"}', timeout=5)
    bad = decode(raw.data, ControlReply)
    assert isinstance(bad, ControlError)
    assert bad.field == "$.attempt"

    failed = await bus.request("cy.ctl.cancel", CancelRun(run_id="boom"), ControlReply)
    assert isinstance(failed, ControlError)
    assert failed.error == "run store unavailable"

    again = await bus.request("cy.ctl.cancel", CancelRun(run_id="r2"), ControlReply)
    assert isinstance(again, Accepted)
    assert again.run_id == "r2"
