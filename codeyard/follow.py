"""`codeyard run`: submit a run and follow its events until it ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeGuard

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from rich.console import Console

from codeyard.bus import Bus
from codeyard.bus.subjects import EVENT_STREAM, ctl_subject, events_subject
from codeyard.cancellation import stop_tasks
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas import (
    Accepted,
    ControlError,
    ControlReply,
    DeadLetter,
    Envelope,
    GateAudit,
    MessageError,
    Progress,
    Run,
    RunEvent,
    RunState,
    RunStateChanged,
    RunStatus,
    StatusQuery,
    SubmitRun,
    Task,
    TaskStatesChanged,
    UsageReported,
    WorkCancelled,
    decode,
)
from codeyard.schemas.messages import AFTER_EVERY_ID, SUBMIT_PATIENCE, unknown_run
from codeyard.terminal_text import quoted_detail, terminal_safe

log = logging.getLogger(__name__)

EventSink = Callable[[RunEvent], None]
RunSink = Callable[[Run], None]


class RunRefused(RuntimeError):
    pass


class RunIdTaken(RunRefused):
    """The run id chosen names a run that exists already, submitted with another goal or other
    settings (or, for a benchmark, any run): bad input."""


class CoordinatorBusy(RunRefused):
    """A coordinator listened but did not answer in time: what was asked may still be done
    (a submission, once its repository is prepared)."""


class SubmissionRefused(RunRefused):
    """The coordinator refused what was submitted, not the moment: its plan (no tasks, a
    cycle, an unknown dependency), its repository (one it cannot clone) or its run id (taken
    meanwhile). Bad input, as `codeyard run` checks it before submitting."""


def refused_input(reply: ControlError) -> bool:
    """Whether the coordinator's refusal of a submission is about the submission's input: the
    field it names is the plan, the repository or the run id."""
    field = reply.field
    return field == "$.run_id" or field.startswith(("$.plan", "$.repo"))


async def ask_coordinator(
    bus: Bus,
    verb: str,
    request: Envelope,
    patience: float = 30.0,
    timeout: float = 10.0,
    busy_patience: float | None = None,
) -> ControlReply:
    """A control request; while no coordinator answers (starting, failing over), try again.
    `timeout`: how long one answer may take. Given up after `patience` (`busy_patience`, if
    longer, while a coordinator listens but has not answered yet), `RunRefused` says which it
    was: nobody listening (no coordinator runs), or a coordinator listening that did not answer
    in time (busy, or its answer could not be sent)."""
    loop = asyncio.get_running_loop()
    busy_waiting = max(patience, busy_patience or 0.0)
    deadline = loop.time() + patience
    busy_deadline = loop.time() + busy_waiting
    subject = ctl_subject(verb)
    while True:
        try:
            reply: ControlReply = await bus.request(subject, request, ControlReply, timeout)
            if not (isinstance(reply, ControlError) and reply.retry):
                return reply
            if loop.time() > busy_deadline:  # a coordinator that keeps failing its steps
                raise CoordinatorBusy(f"the coordinator did not answer on {subject}: {reply.error}")
        except MessageError as exc:  # e.g. a state added since: asking again gets the same
            raise RunRefused(
                f"the coordinator's answer on {subject} could not be read ({exc}): it may be "
                "newer than this codeyard; upgrade codeyard"
            ) from None
        except nats.errors.NoRespondersError:  # nobody subscribed: no coordinator, or between two
            if loop.time() > deadline:
                raise RunRefused(
                    f"no coordinator answered on {subject} within {patience:.0f}s; "
                    "is `codeyard up` (or `codeyard coordinator`) running?"
                ) from None
        except nats.errors.TimeoutError:  # one subscribed, and its answer did not come
            if loop.time() > busy_deadline:
                raise CoordinatorBusy(
                    f"the coordinator did not answer on {subject} in time (each try waited "
                    f"{timeout:g}s, for {busy_waiting:.0f}s in all): it may be busy, or its answer "
                    "could not be sent; try again, or see the coordinator's log"
                ) from None
        await asyncio.sleep(0.25)


async def run_status(
    bus: Bus, run_id: str, patience: float = 30.0, timeout: float = 10.0
) -> ControlReply:
    """The status of run `run_id`, every task of it: read in pages when the run is too big
    for one reply (see `StatusQuery`); the refusal of any page is the answer. (Each page
    starts after the last: one that would not is not asked for, rather than asked for ever.)"""
    if not run_id:  # a query of no run id is one of every run: its first would be answered
        raise ValueError("no run id: the status of which run?")
    asked = StatusQuery(run_id=run_id, paged=True)
    reply = first = await ask_coordinator(bus, "status", asked, patience=patience, timeout=timeout)
    tasks: dict[str, Task] = {}
    while isinstance(reply, RunStatus) and reply.runs and reply.more_after > asked.after:
        tasks |= reply.runs[0].tasks
        asked = StatusQuery(run_id=run_id, paged=True, after=reply.more_after)
        reply = await ask_coordinator(bus, "status", asked, patience=patience, timeout=timeout)
    if not tasks or not isinstance(reply, RunStatus) or not reply.runs:
        return reply
    assert isinstance(first, RunStatus)  # (`tasks` came from it)
    # The header of the first page, the oldest reading: with a later one's `updated_at`, a
    # task read on an earlier page would look newer than events since (see `RunView.update`).
    run = msgspec.structs.replace(first.runs[0], tasks=tasks | reply.runs[0].tasks)
    return RunStatus(run_id=run_id, runs=[run])


# Fields a person gives as the command's own argument (`status RUN`, `approve ID`): "(at
# $.run_id)" after an error about the run they named would only be jargon.
NAMED_BY_THE_COMMAND = frozenset({"$.run_id", "$.approval_id"})


def refusal(reply: ControlError) -> str:
    """The coordinator's refusal in one line: its error, then the field at fault unless the
    error names it already (that of a request it could not decode does), or the person named
    it as the command's argument."""
    where = f" (at {reply.field})"
    if not reply.field or reply.field in NAMED_BY_THE_COMMAND or reply.error.endswith(where):
        return reply.error
    return reply.error + where


# Of a command a person decides on, shown: the whole of most; its later lines run too.
DETAIL_SHOWN = 400


def describe(event: RunEvent) -> list[str]:
    """What a person following the run is told of `event` (nothing of the chatter): lines safe
    for a terminal, whatever the run's agents wrote (see `codeyard.terminal_text`)."""
    return [terminal_safe(line) for line in _told(event)]


def _told(event: RunEvent) -> list[str]:
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
            detail = quoted_detail(event.check.detail, DETAIL_SHOWN)
            return [
                f"  {event.task_id}: {event.check.action} {detail} waits for a person: "
                f"{event.decision.reason}",
                f"    codeyard approve {approval}   or   codeyard deny {approval}",
            ]
        case _:
            return []


def log_lines(event: RunEvent) -> list[str]:
    """`codeyard logs`: every event as readable lines (`describe` leaves out the chatter), each
    stamped with the local time it was sent, made safe for a terminal as `describe`'s are."""
    lines = _told(event)
    if not lines:
        match event:
            case Progress():
                lines = [f"  {event.task_id or 'planning'}: {event.role}: {event.message}"]
            case UsageReported():
                usage = event.usage
                lines = [
                    f"  {event.task_id or 'planning'}: {event.role} used "
                    f"{usage.total_tokens} tokens"
                    + (f" of {event.model}" if event.model else "")
                    + f" (${usage.cost_usd:.4f})"
                ]
            case GateAudit():
                # (decided: no longer among the approvals; the event has it whole)
                detail = quoted_detail(
                    event.check.detail, 80, f"codeyard logs --json {event.run_id}"
                )
                lines = [
                    f"  {event.task_id or '-'}: gate {event.decision.decision} "
                    f"{event.check.action} {detail}"
                    + (f": {event.decision.reason}" if event.decision.reason else "")
                ]
    stamp = event.sent_at.astimezone().strftime("%H:%M:%S")
    return [f"{stamp} {terminal_safe(line)}" for line in lines]


def each_once(sink: EventSink) -> EventSink:
    """`sink`, given each event once: a coordinator that loads a run publishes its last step's
    events again (they may have been lost), under their ids; a copy the events stream did not
    drop as one (published after its duplicate window) is dropped here."""
    seen: set[str] = set()

    def once(event: RunEvent) -> None:
        if event.msg_id not in seen:
            seen.add(event.msg_id)
            sink(event)

    return once


def is_run_end(event: RunEvent) -> TypeGuard[RunStateChanged]:
    return isinstance(event, RunStateChanged) and event.state in TERMINAL_RUN_STATES


async def _end_denied(bus: Bus, end: RunStateChanged) -> bool:
    """Whether the coordinator says the run of `end` is still open: the event was not its own
    (workers may publish on `cy.events.>`, for their dead letters), and following the run
    goes on. The coordinator stores a run's end before it tells it, so a true end is never
    denied; an end it cannot be asked about (no coordinator answers) is taken as told."""
    try:
        run = await existing_run(bus, end.run_id, tasks=False, patience=2.0)
    except RunRefused as exc:
        log.debug("whether run %s ended: %s", end.run_id, exc)
        return False
    if run is None or run.state in TERMINAL_RUN_STATES:
        return False
    log.warning(
        "ignored an event saying run %s is %s: the coordinator says it is %s (the event did "
        "not come from it)",
        end.run_id,
        end.state,
        run.state,
    )
    return True


async def _pass_on(bus: Bus, msg: Msg, sink: EventSink, finished: asyncio.Event) -> None:
    """Pass a followed run's event to `sink`; set `finished` at the run's end, once the
    coordinator confirms it."""
    event = decode(msg.data, RunEvent)
    if is_run_end(event) and await _end_denied(bus, event):
        return
    sink(event)
    if is_run_end(event):
        finished.set()


def outcome_event(run: Run) -> RunStateChanged:
    """How the ended `run` ended, as its record says it: its end as an event, for when its
    stored events no longer hold it (events expire after CODEYARD_EVENT_RETENTION_DAYS, run
    records do not). Stamped with the record's last change."""
    return RunStateChanged(
        run_id=run.run_id, state=run.state, reason=run.error, sent_at=run.updated_at
    )


async def replay_ended_run(bus: Bus, run: Run, on_event: EventSink) -> bool:
    """The stored events of `run`, which has ended, then its outcome from its record if they no
    longer include its end (`outcome_event`): no end event will ever come to wait for. True
    when the outcome came from the record."""
    from codeyard.report.source import read_run_events  # it imports this module

    events = await read_run_events(bus, run.run_id)
    on_event = each_once(on_event)
    for event in events:
        on_event(event)
    if any(is_run_end(event) for event in events):
        return False
    on_event(outcome_event(run))
    return True


async def _ended_run(bus: Bus, run_id: str) -> Run | None:
    """The run's record if the coordinator says it has ended; None if not (or no answer that
    says: following it then waits for its end event as ever)."""
    reply = await run_status(bus, run_id)
    if isinstance(reply, RunStatus) and reply.runs and reply.runs[0].state in TERMINAL_RUN_STATES:
        return reply.runs[0]
    return None


RUN_CHECK_EVERY = 5.0
"""Seconds between two checks that a run being followed still exists (`follow_events`)."""


async def _until_unknown(bus: Bus, run_id: str, every: float) -> None:
    """Returns once the coordinator no longer knows run `run_id`, asked every `every` seconds.
    A run whose repository is being prepared shows as planning; if preparing it fails, only
    its submitter is told, and no event ever comes. No answer (a failover) is asked again."""
    while True:
        await asyncio.sleep(every)
        try:
            if await existing_run(bus, run_id, tasks=False, patience=every) is None:
                return
        except RunRefused as exc:
            log.debug("whether run %s exists: %s", run_id, exc)


async def follow_events(
    bus: Bus, run: Run, on_event: EventSink, check_every: float = RUN_CHECK_EVERY
) -> bool:
    """Every event of `run`, whose record the caller has just read, from its first, as they
    come, until it ends (or the caller is cancelled: Ctrl-C). One that had ended when read is
    not waited for: its stored events are passed on, then, if they no longer hold its end, its
    outcome from its record (`replay_ended_run`, whose answer is returned; False when the end
    came as an event). One that ends after it was read is followed: its end event comes, or is
    stored. One the coordinator no longer knows (asked every `check_every` seconds) is
    `RunRefused`: it will never end."""
    if run.state in TERMINAL_RUN_STATES:
        return await replay_ended_run(bus, run, on_event)
    finished = asyncio.Event()
    on_event = each_once(on_event)

    async def deliver(msg: Msg) -> None:
        await _pass_on(bus, msg, on_event, finished)

    subscription = await bus.js.subscribe(
        events_subject(run.run_id),
        stream=EVENT_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=deliver,
    )
    ending = asyncio.create_task(finished.wait())
    unknown = asyncio.create_task(_until_unknown(bus, run.run_id, check_every))
    try:
        await asyncio.wait([ending, unknown], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop_tasks([ending, unknown])  # it loops on nats-py requests
        await subscription.unsubscribe()
    if not finished.is_set():
        unknown.result()  # (what it failed with, if it did)
        raise RunRefused(
            f"run {run.run_id} no longer exists: its submission was refused (its submitter was "
            "told why, e.g. a repository that could not be cloned) or it was removed"
        )
    return False


def print_event(console: Console) -> EventSink:
    """The line-by-line follower: what `codeyard run` prints when stdout is not a terminal."""

    def sink(event: RunEvent) -> None:
        for line in describe(event):
            console.print(line, markup=False, highlight=False)

    return sink


async def _poll_status(bus: Bus, run_id: str, on_status: RunSink, every: float) -> None:
    pause = every
    while True:
        try:
            reply = await run_status(bus, run_id, patience=every)
        except RunRefused as exc:  # a failover: the next poll will tell
            log.debug("status poll: %s", exc)
        else:
            if isinstance(reply, RunStatus) and reply.runs:
                on_status(reply.runs[0])
                pause = poll_pause(every, len(reply.runs[0].tasks))
        await asyncio.sleep(pause)


TASKS_PER_POLL = 1000


def poll_pause(every: float, tasks: int) -> float:
    """Seconds between two status polls of a run of `tasks` tasks: `every`, once per
    `TASKS_PER_POLL` tasks. The coordinator encodes the whole run for each (a 10,000-task run
    is megabytes, read in pages), while the events keep the view current in between."""
    return every * max(1.0, tasks / TASKS_PER_POLL)


async def existing_run(
    bus: Bus, run_id: str, *, tasks: bool = True, patience: float = 30.0
) -> Run | None:
    """The run `run_id` names, ended or not; None when the coordinator knows none. Any other
    refusal (it did not finish in time, a record it cannot read) is `RunRefused`: taken for
    "no such run", it would let a submission follow a run it did not start. `tasks=False`:
    its header without its tasks (a coordinator that does not page status sends them all)."""
    if not run_id:  # (a query of no run id is one of every run)
        raise ValueError("no run id: which run?")
    if tasks:
        reply = await run_status(bus, run_id, patience=patience)
    else:
        header = StatusQuery(run_id=run_id, paged=True, after=AFTER_EVERY_ID)
        reply = await ask_coordinator(bus, "status", header, patience=patience)
    if isinstance(reply, RunStatus) and reply.runs:
        return reply.runs[0]
    if isinstance(reply, ControlError) and reply.error != unknown_run(run_id).error:
        raise RunRefused(f"cannot tell whether run {run_id} exists: {refusal(reply)}")
    return None


async def submit_and_follow(
    bus: Bus,
    submit: SubmitRun,
    console: Console,
    timeout: float,
    *,
    on_event: EventSink | None = None,
    on_status: RunSink | None = None,
    status_every: float = 1.0,
) -> Run:
    """Submit `submit` and pass its events to `on_event` (default: print them) until the run
    ends, or `timeout` seconds after the submission was sent (TimeoutError; `CoordinatorBusy`
    if it was not answered by then); with `on_status`, the run's record is also asked for
    every `status_every` seconds (for what events do not carry: titles, dependencies, usage;
    less often for a run of thousands of tasks, see `poll_pause`). The final run is returned."""
    finished = asyncio.Event()
    sink = each_once(on_event or print_event(console))
    until = asyncio.get_running_loop().time() + timeout

    async def deliver(msg: Msg) -> None:
        await _pass_on(bus, msg, sink, finished)

    # A large repository is cloned and published before the answer (see SUBMIT_PATIENCE).
    reply = await ask_coordinator(
        bus,
        "submit",
        submit,
        patience=min(30.0, timeout),
        timeout=min(10.0, timeout),
        busy_patience=min(SUBMIT_PATIENCE, timeout),
    )
    if isinstance(reply, ControlError):
        # before subscribing: a refused run id may name another run, whose events are not ours
        raise (SubmissionRefused if refused_input(reply) else RunRefused)(refusal(reply))
    assert isinstance(reply, Accepted)
    # The same submission again may name a run that ended: its end event may have expired,
    # and none will come; its record says how it ended. A run just created has all its events.
    ended = None if reply.created else await _ended_run(bus, submit.run_id)
    if ended is not None:
        if on_status is not None:
            on_status(ended)
        await replay_ended_run(bus, ended, sink)
        return ended
    # from the first event on: an ordered consumer replays what happened before we subscribed
    subscription = await bus.js.subscribe(
        events_subject(submit.run_id),
        stream=EVENT_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=deliver,
    )
    polling: asyncio.Task[None] | None = None
    try:
        if on_status is not None:
            polling = asyncio.create_task(_poll_status(bus, submit.run_id, on_status, status_every))
        async with asyncio.timeout_at(until):
            await finished.wait()
    finally:
        if polling is not None:
            await stop_tasks([polling])  # it loops on nats-py requests
        await subscription.unsubscribe()
    status = await run_status(bus, submit.run_id)
    if not isinstance(status, RunStatus):
        raise RunRefused(f"cannot read the run's final state: {status}")
    return status.runs[0]
