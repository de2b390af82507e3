"""`codeyard run`: submit a run and follow its events until it ends."""

from __future__ import annotations

import asyncio

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from rich.console import Console

from codeyard.bus import Bus
from codeyard.bus.subjects import EVENT_STREAM, ctl_subject, events_subject
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas import (
    Accepted,
    ControlError,
    ControlReply,
    DeadLetter,
    Envelope,
    GateAudit,
    Run,
    RunEvent,
    RunState,
    RunStateChanged,
    RunStatus,
    StatusQuery,
    SubmitRun,
    TaskStatesChanged,
    WorkCancelled,
    decode,
)


class RunRefused(RuntimeError):
    pass


async def ask_coordinator(
    bus: Bus, verb: str, request: Envelope, patience: float = 30.0
) -> ControlReply:
    """A control request; while no coordinator answers (starting, failing over), try again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            reply: ControlReply = await bus.request(ctl_subject(verb), request, ControlReply, 10)
            return reply
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if loop.time() > deadline:
                raise RunRefused(
                    f"no coordinator answered on {ctl_subject(verb)} within {patience:.0f}s; "
                    "is `codeyard up` (or `codeyard coordinator`) running?"
                ) from None
            await asyncio.sleep(0.25)


def describe(event: RunEvent) -> list[str]:
    match event:
        case RunStateChanged():
            reason = f" ({event.reason})" if event.reason else ""
            lines = [f"run {event.state}{reason}"]
            if event.state in (RunState.PLAN_APPROVAL, RunState.AWAITING_APPROVAL):
                lines.append("  waits for a person: see `codeyard approvals`")
            return lines
        case TaskStatesChanged():
            return [
                f"  {change.task_id}: {change.state} (attempt {change.attempt})"
                + (f" - {change.reason.splitlines()[0][:100]}" if change.reason else "")
                for change in event.changes
            ]
        case WorkCancelled():
            return [f"  {event.task_id or 'planning'}: work withdrawn"]
        case DeadLetter():
            return [f"  dead letter on {event.subject}: {event.error}"]
        case GateAudit() if event.decision.decision == "needs_approval":
            approval = event.decision.approval_id
            detail = event.check.detail.strip().splitlines()[0][:80] if event.check.detail else ""
            return [
                f"  {event.task_id}: {event.check.action} {detail!r} waits for a person: "
                f"{event.decision.reason}",
                f"    codeyard approve {approval}   or   codeyard deny {approval}",
            ]
        case _:
            return []


async def submit_and_follow(bus: Bus, submit: SubmitRun, console: Console, timeout: float) -> Run:
    """Submit `submit` and print its events until the run ends; the final run is returned."""
    finished = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        event = decode(msg.data, RunEvent)
        for line in describe(event):
            console.print(line, markup=False, highlight=False)
        if isinstance(event, RunStateChanged) and event.state in TERMINAL_RUN_STATES:
            finished.set()

    # from the first event on: an ordered consumer replays what happened before we subscribed
    subscription = await bus.js.subscribe(
        events_subject(submit.run_id),
        stream=EVENT_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=on_event,
    )
    try:
        reply = await ask_coordinator(bus, "submit", submit)
        if isinstance(reply, ControlError):
            where = f" (at {reply.field})" if reply.field else ""
            raise RunRefused(f"{reply.error}{where}")
        assert isinstance(reply, Accepted)
        await asyncio.wait_for(finished.wait(), timeout)
    finally:
        await subscription.unsubscribe()
    status = await ask_coordinator(bus, "status", StatusQuery(run_id=submit.run_id))
    if not isinstance(status, RunStatus):
        raise RunRefused(f"cannot read the run's final state: {status}")
    return status.runs[0]
