"""Where a report's data comes from: the run's record (asked of the coordinator) and every
stored event of the run (read from the CY_EVENTS stream)."""

from __future__ import annotations

from nats.js.api import DeliverPolicy

from codeyard.bus import Bus
from codeyard.bus.subjects import EVENT_STREAM, events_subject
from codeyard.follow import run_status
from codeyard.schemas import (
    ControlError,
    MessageError,
    Run,
    RunEvent,
    RunStatus,
    decode,
)


class UnknownRun(LookupError):
    pass


async def fetch_run(bus: Bus, run_id: str, patience: float = 10.0) -> Run:
    """The run's record with its tasks; `UnknownRun` when the coordinator knows no such run."""
    reply = await run_status(bus, run_id, patience=patience)
    if isinstance(reply, ControlError):
        raise UnknownRun(reply.error)
    if not isinstance(reply, RunStatus) or not reply.runs:
        raise UnknownRun(f"no run {run_id!r} (unexpected reply {type(reply).__name__})")
    return reply.runs[0]


async def read_run_events(bus: Bus, run_id: str, timeout: float = 10.0) -> list[RunEvent]:
    """The run's events in stream order, as many as the stream held when asked (a run still
    going on adds more later; they are not waited for). Undecodable ones are skipped: a report
    of what can be read beats no report."""
    subject = events_subject(run_id)
    info = await bus.js.stream_info(EVENT_STREAM, subjects_filter=subject)
    expected = (info.state.subjects or {}).get(subject, 0)
    if not expected:
        return []
    subscription = await bus.js.subscribe(
        subject, stream=EVENT_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    events: list[RunEvent] = []
    try:
        for _ in range(expected):
            msg = await subscription.next_msg(timeout=timeout)
            try:
                events.append(decode(msg.data, RunEvent))
            except MessageError:
                continue
    finally:
        await subscription.unsubscribe()
    return events
