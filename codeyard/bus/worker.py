"""The pull-consumer loop every role runs: fetch, handle, publish the result, then ack.

Delivery is at least once. A message is acked only after its result is stored in JetStream, so
a worker that dies at any point leaves the message to be redelivered (after `ack_wait`) to any
worker on the same durable consumer. While a handler runs, `in_progress()` heartbeats keep a
short `ack_wait` from redelivering live work.

Work the coordinator withdraws (a `WorkCancelled` notice on `cy.cancel.<run_id>`) is dropped
for good, its message termed and no result sent, whether the notice finds its handler running
or comes before the item reaches one. A worker built with `skip_ended_runs` also drops, the
same way, any item whose run has ended by the run's header in `cy_runs` (`EndedRuns`): the
notices reach only the workers listening when they are sent, and are kept for a while only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import typing
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from codeyard.bus import permissions, subjects
from codeyard.bus.connection import Bus
from codeyard.bus.consumer import PullConsumer, delivery_count
from codeyard.bus.presence import PresenceAnnouncer
from codeyard.bus.result_sender import ResultInvalid, ResultSender, ResultTooLarge
from codeyard.bus.run_ends import EndedRuns
from codeyard.bus.topology import ensure_role_consumer
from codeyard.cancellation import in_background, stop_tasks
from codeyard.observability import metrics
from codeyard.observability.context import enter_work
from codeyard.schemas.codec import MessageError, decode
from codeyard.schemas.envelope import ID_PATTERN
from codeyard.schemas.messages import (
    ApprovalNeeded,
    CodeResult,
    Result,
    UndecodableWork,
    WorkCancelled,
    WorkFailed,
    WorkItem,
    WorkRetried,
)
from codeyard.schemas.model import SHORT_TEXT_CHARS, Usage, clip

log = logging.getLogger(__name__)

Handler = Callable[[WorkItem], Awaitable[Result]]
# (run_id, trace_id, task_id, attempt) of a work item: the trace names the run's submission
WorkKey = tuple[str, str, str, int]

DEAD_LETTER_PAYLOAD_LIMIT = 4096
_ID = re.compile(ID_PATTERN)
RESULT_TYPES: tuple[type, ...] = typing.get_args(Result)
ACK_WAIT_LOOKUP_SECONDS = 2.0
ACK_WAIT_RECHECK_SECONDS = 60.0
# Seconds a stopping worker lets its handlers finish before handing their work back: whoever
# stops it (`codeyard up`, Docker, Kubernetes) must wait longer before killing it.
STOP_GRACE = 30.0
# Seconds a withdrawal is remembered for an item yet to come (`Withdrawals`).
WITHDRAWAL_KEEP = 600.0


class HandedBack(Exception):
    """What a handler raises instead of answering. `usage` is what the work spent before (LLM
    calls), and `model` the LLM model that answered them ("": none, or not said): the worker
    passes both on in what it sends instead of a result, so the run still counts the spend
    and the report names the model."""

    def __init__(self, reason: str, *, usage: Usage | None = None, model: str = "") -> None:
        super().__init__(reason)
        self.usage = usage or Usage()
        self.model = model


class RetryLater(HandedBack):
    """The handler could not finish now (rate limit, dependency down); redeliver after `delay`.
    The worker reports the spend in a `WorkRetried` before handing the item back, as no result
    will carry it."""

    def __init__(
        self,
        reason: str,
        delay: float | None = None,
        *,
        usage: Usage | None = None,
        model: str = "",
    ) -> None:
        super().__init__(reason, usage=usage, model=model)
        self.delay = delay


class GiveUp(HandedBack):
    """The work can never succeed; answer with a WorkFailed result right away."""


class AwaitApproval(HandedBack):
    """The safety gate sent an action of this work to a person: hand the work item back as
    `ApprovalNeeded` (which carries the spend), and the coordinator sends it again once the
    approval is answered."""

    def __init__(
        self,
        approval_id: str,
        action: str,
        detail: str,
        reason: str,
        *,
        usage: Usage | None = None,
        model: str = "",
    ) -> None:
        super().__init__(
            f"{action} needs approval {approval_id}: {reason}", usage=usage, model=model
        )
        self.approval_id = approval_id
        self.action = action
        self.detail = detail
        self.reason = reason


@dataclass
class WorkerStats:
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    handed_back: int = 0  # delivered beyond `concurrency`, nak'd for whoever has room
    run_ended: int = 0  # termed without running: their run had ended (`skip_ended_runs`)


def result_msg_id(work_msg_id: str) -> str:
    """The result of a work item has a fixed id, so a result published twice (worker died
    between publish and ack) is stored once by JetStream's duplicate window."""
    return hashlib.sha256(f"{work_msg_id}:result".encode()).hexdigest()[:32]


def retried_msg_id(work_msg_id: str, delivery: int) -> str:
    """The id of the `WorkRetried` of one delivery: unlike the result's, one per delivery, so
    each delivery's spending is stored (and counted) once, and none is taken for the result."""
    return hashlib.sha256(f"{work_msg_id}:retried:{delivery}".encode()).hexdigest()[:32]


def _model_name(model: object) -> str:
    """A model a handler named, cut to what a result may carry (the name is the endpoint's to
    choose: one too long would make the result, and what it spent, undeliverable); "" for
    anything but a string (nothing checks what a handler puts in the structs it builds)."""
    return clip(model, SHORT_TEXT_CHARS) if isinstance(model, str) else ""


def _answering(item: WorkItem, result: Result) -> Result:
    """`result` with the envelope of the work item it answers."""
    return msgspec.structs.replace(
        result,
        run_id=item.run_id,
        task_id=item.task_id,
        attempt=item.attempt,
        trace_id=item.trace_id,
        proof=item.proof,
        msg_id=result_msg_id(item.msg_id),
    )


class _Addressed(msgspec.Struct):
    run_id: str = ""


def _run_id_of(payload: bytes) -> str:
    """The run an undecodable message names, if it names a valid one, to file its dead letter
    with; "" (unrouted) for anything else. Decoded by `decode`, which turns whatever hostile
    input does to msgspec (nesting deep enough to exhaust its recursion) into a MessageError."""
    try:
        run_id = decode(payload, _Addressed).run_id
    except MessageError:
        return ""
    return run_id if _ID.fullmatch(run_id) else ""


class Heartbeats:
    """Sends `in_progress()` every `interval` seconds for each message whose handler still runs,
    from one timer for all of them: most handlers finish before their first beat, and a timer
    per message cost more than a no-op handler itself. A message's first beat comes between
    `interval` and 1.5 `interval` after it started."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[int, tuple[Msg, float]] = {}  # by id(msg): Msg is not hashable
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, interval: float) -> None:
        """A shorter interval takes effect for the messages already beating too: their next
        sweep, scheduled at the old one, could come after the server's ack_wait."""
        self._interval = interval
        if self._timer is not None:
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(interval / 2, self._sweep)

    def start(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        self._last[id(msg)] = (msg, loop.time())
        if self._timer is None:
            self._timer = loop.call_later(self.interval / 2, self._sweep)

    def stop(self, msg: Msg) -> None:
        self._last.pop(id(msg), None)

    def close(self) -> None:
        self._last.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for key, (msg, last) in list(self._last.items()):
            if now - last >= self.interval:
                self._last[key] = (msg, now)
                in_background(self._sending, self._send(msg))
        self._timer = loop.call_later(self.interval / 2, self._sweep) if self._last else None

    async def _send(self, msg: Msg) -> None:
        try:
            await msg.in_progress()
        except Exception as exc:  # the ack_wait timer will tell, no need to stop the handler
            log.debug("heartbeat failed: %s", exc)


class Withdrawals:
    """Work the coordinator withdrew lately, by `WorkKey`.

    A notice is not stored and reaches only the workers listening when it is sent, so one for
    an item not yet running (still in the stream, fetched but not started, on its way back to
    be redelivered) is remembered here until the item comes. At most `limit` keys are kept, for
    up to `keep` seconds each, the oldest going first: a withdrawn item is at most `ack_wait`
    (plus a redelivery backoff) from arriving, and a run withdraws only its work in flight.

    A notice names the submission whose work it withdraws (its `trace_id`, as the work's), so a
    run id submitted again after its record was deleted does not lose its new work to the old
    run's notices. One whose trace is the run id (a coordinator before that) withdraws the work
    of every submission of the run.
    """

    def __init__(self, limit: int = 4096, keep: float = WITHDRAWAL_KEEP) -> None:
        self._limit = limit
        self._keep = keep
        self._since: OrderedDict[WorkKey, float] = OrderedDict()  # oldest first

    def add(self, key: WorkKey) -> None:
        now = time.monotonic()
        self._since[key] = now
        self._since.move_to_end(key)
        self._forget_old(now)

    def discard(self, key: WorkKey) -> None:
        self._since.pop(key, None)
        self._since.pop(_every_submission(key), None)

    def __contains__(self, key: WorkKey) -> bool:
        if not self._since:  # (asked two or three times per item, nearly always of none)
            return False
        return self._kept(key) or self._kept(_every_submission(key))

    def _kept(self, key: WorkKey) -> bool:
        since = self._since.get(key)
        return since is not None and time.monotonic() - since < self._keep

    def __len__(self) -> int:
        return len(self._since)

    def _forget_old(self, now: float) -> None:
        while self._since and (
            len(self._since) > self._limit or now - next(iter(self._since.values())) >= self._keep
        ):
            self._since.popitem(last=False)


def _every_submission(key: WorkKey) -> WorkKey:
    run_id, _, task_id, attempt = key
    return (run_id, run_id, task_id, attempt)


def _withdraws(notice: WorkKey, work: WorkKey) -> bool:
    """Whether a notice naming `notice` withdraws the work `work` (see `Withdrawals`)."""
    return work == notice or _every_submission(work) == notice


class PullWorker:
    """Serves one role's durable consumer with up to `concurrency` handlers at once.

    `max_deliver` is enforced here rather than by the server, which would drop the message
    silently: on its last allowed delivery a failing handler yields a WorkFailed result, and a
    message delivered more often than allowed (its workers kept dying) fails without running.

    A withdrawn item (see `Withdrawals`) is termed without an answer: before its handler
    starts, or once its handler ends (cancelled by the withdrawal, or ending anyway). A
    withdrawal that comes after the handler ended finds the item being answered, and lets it be.

    Never more than `concurrency` handlers run: a message delivered beyond that (the server
    may fill a request it kept across a reconnect as well as those asked anew) is nak'd at
    once, for whoever has room, and counted in `stats.handed_back`.

    With `skip_ended_runs`, an item whose run has ended (done, failed or cancelled, as its
    header in `cy_runs` says) is termed before its handler starts, without an answer, and
    counted in `stats.run_ended`: withdrawals reach only the workers listening when they are
    sent, and are remembered for `withdrawal_keep` seconds. It costs one KV read per item of
    an open run, and nothing for the later items of an ended one (see `EndedRuns`): worth it
    for handlers that spend (LLM calls, a sandbox), not for one that answers in microseconds.
    A read that fails runs the item, as without the check.
    """

    def __init__(
        self,
        bus: Bus,
        role: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        max_deliver: int = 5,
        retry_delays: Sequence[float] = (1.0, 5.0, 30.0),
        fetch_timeout: float = 5.0,
        skip_ended_runs: bool = False,
        withdrawal_keep: float = WITHDRAWAL_KEEP,
    ) -> None:
        self.bus = bus
        self.role = subjects.check_role(role)
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.max_deliver = max(1, max_deliver)
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.fetch_timeout = fetch_timeout
        self.stats = WorkerStats()
        self._handled = metrics.WORK_HANDLED.labels(self.role)
        self._failed = metrics.WORK_FAILED.labels(self.role)
        self._results = ResultSender(bus.pipeline, subjects.result_subject(self.role))
        self._consumer = subjects.consumer_name(self.role)
        self._heartbeats = Heartbeats(bus.topology.ack_wait / 3)
        self._handler_seconds = {
            outcome: metrics.HANDLER_SECONDS.labels(self.role, outcome)
            for outcome in ("ok", "cancelled", "retry", "failed", "approval")
        }
        # handlers running, by the (run, task, attempt) of their item; and work withdrawn
        # Each handler's task, with its work: by task, as one worker may hold two copies of the
        # same work (a new leader sends outstanding work again; work comes back after ack_wait).
        self._running: dict[asyncio.Task[None], WorkKey] = {}
        self._withdrawn = Withdrawals(keep=withdrawal_keep)
        self.ended_runs = EndedRuns(bus) if skip_ended_runs else None

    @property
    def js(self) -> JetStreamContext:
        return self.bus.js

    async def run(self, stop: asyncio.Event, grace: float = STOP_GRACE) -> None:
        """Serve until `stop` is set; then finish in-flight work for up to `grace` seconds and
        nak whatever is still running, so it is redelivered at once elsewhere."""
        create = permissions.consumer_create_subject(
            subjects.WORK_STREAM, self._consumer, subjects.work_subject(self.role)
        )
        # no authentication, or a user allowed to (the subject named as its account names
        # JetStream's API, as its grants are)
        if self.bus.may_publish(permissions.through(create, self.bus.js_api)):
            await ensure_role_consumer(self.js, self.role, self.bus.topology)
        # else the coordinator creates it: for a builtin role at its start, for a plugin
        # reviewer once a run needs it. Until then each pull is refused at once, quietly, and
        # asked again a second later (`REFUSED_PAUSE`): the worker serves about that soon after.
        inflight: set[asyncio.Task[None]] = set()
        wake = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            wake.set()

        def deliver(msg: Msg) -> None:
            if stop.is_set():  # arrived after we stopped asking: let it go to another worker
                asyncio.create_task(msg.nak())  # noqa: RUF006 - fire and forget
                return
            if len(inflight) >= self.concurrency:
                # More than asked for (see the class docstring). Handlers may count on the
                # limit (rate limits, sandboxes), and holding it here could park it behind a
                # long handler while other workers idle; the nak costs one delivery of
                # max_deliver, and happens only around a reconnect or a consumer's loss.
                self.stats.handed_back += 1
                log.info("%s: handing back work beyond concurrency %d", self.role, self.concurrency)
                asyncio.create_task(msg.nak())  # noqa: RUF006 - fire and forget
                return
            task = asyncio.create_task(self._handle(msg))
            inflight.add(task)
            task.add_done_callback(finished)

        consumer = PullConsumer(
            self.bus.nc,
            subjects.WORK_STREAM,
            self._consumer,
            deliver,
            expires=self.fetch_timeout,
            js_api=self.bus.js_api,
        )
        consumer.on_ask_again = wake.set
        await consumer.start()
        self.bus.reconnected.append(consumer.forget_all)
        cancellations = await self.bus.nc.subscribe(
            subjects.cancel_subject("*"), cb=self._on_cancel
        )
        presence = PresenceAnnouncer(self.bus, self.role, self.concurrency, self._running.__len__)
        presence.start()
        stopping = asyncio.create_task(stop.wait())
        matching = asyncio.create_task(self._match_ack_wait())
        try:
            while not stop.is_set():
                wake.clear()  # before looking, so a slot freed from here on wakes us
                consumer.forget_expired()
                missing = self.concurrency - len(inflight) - consumer.outstanding
                # ask in chunks when busy (fewer requests), at once when idle (low latency)
                if missing >= max(1, self.concurrency // 4) or consumer.outstanding == 0:
                    await consumer.request(missing)
                woken = asyncio.create_task(wake.wait())
                await asyncio.wait(
                    {woken, stopping}, timeout=self.fetch_timeout, return_when=FIRST_COMPLETED
                )
                woken.cancel()
        finally:
            stopping.cancel()
            await stop_tasks([matching])
            await presence.stop()
            await consumer.stop()
            self.bus.reconnected.remove(consumer.forget_all)
            if inflight:  # (still hearing withdrawals: the work they name need not finish)
                _, pending = await asyncio.wait(inflight, timeout=grace)
                await stop_tasks(pending)
            await cancellations.unsubscribe()
            self._heartbeats.close()

    async def _match_ack_wait(self) -> None:
        """Beat at a third of the consumer's ack_wait as the server has it, when shorter than
        this process's setting: the coordinator creates the built-in roles' consumers with its
        own, and work whose beats came too rarely would be redelivered while it runs. Looked
        up until the consumer exists (its creator may start later), then again every
        `ACK_WAIT_RECHECK_SECONDS`: a coordinator restarted with a shorter one updates it."""
        own = self.bus.topology.ack_wait
        while True:
            try:
                info = await self.js.consumer_info(subjects.WORK_STREAM, self._consumer)
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(ACK_WAIT_LOOKUP_SECONDS)
                continue
            except Exception as exc:  # not permitted, say: our own setting holds
                log.info("%s: cannot read the consumer's ack_wait: %s", self.role, exc)
                return
            server = info.config.ack_wait or own
            beat = min(server, own) / 3
            if beat != self._heartbeats.interval:
                if server < own:
                    log.warning(
                        "%s: the consumer's ack_wait is %g s, shorter than this worker's %g s "
                        "(CODEYARD_ACK_WAIT): beating every %g s",
                        self.role,
                        server,
                        own,
                        beat,
                    )
                self._heartbeats.interval = beat
            await asyncio.sleep(ACK_WAIT_RECHECK_SECONDS)

    async def _handle(self, msg: Msg) -> None:
        deliveries = delivery_count(msg)
        try:
            item: WorkItem = decode(msg.data, WorkItem)
        except MessageError as exc:
            await self._dead_letter(msg, exc)
            return
        enter_work(item.run_id, item.task_id, item.attempt)  # this task's log lines name it
        key = (item.run_id, item.trace_id, item.task_id, item.attempt)
        if key not in self._withdrawn and await self._run_ended(msg, item):
            self.stats.run_ended += 1
            await self._drop(msg, item, key, "work of an ended run")
            return
        # No await from here until the handler is in `_running`: a notice coming in between
        # would find it neither withdrawn here nor running.
        if key in self._withdrawn:  # withdrawn before it came: it never runs
            await self._drop(msg, item, key)
            return
        if deliveries > self.max_deliver:
            reason = (
                f"delivered {deliveries} times without an answer (limit {self.max_deliver}); "
                "the workers handling it kept dying or timing out"
            )
            failed = WorkFailed(role=self.role, reason=reason, deliveries=deliveries)
            if await self._finish(msg, item, failed):
                self._count_failed()
            return
        self._heartbeats.start(msg)
        try:
            await self._serve(msg, item, key, deliveries)
        finally:
            # Only once the answer (or nak, or term) is sent: publishing a result may wait
            # seconds for its ack, and a short ack_wait would redeliver the item meanwhile.
            self._heartbeats.stop(msg)

    async def _serve(self, msg: Msg, item: WorkItem, key: WorkKey, deliveries: int) -> None:
        """Run the handler on `item` and answer for it, by how the handler ended."""
        # The handler runs in this task (a task of its own per item cost more than a no-op
        # handler); a withdrawal cancels this task while it awaits the handler, and only then.
        task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]  # in a task
        self._running[task] = key
        started = time.monotonic()
        ended: Result | Exception | asyncio.CancelledError
        try:
            ended = await self.handler(item)
            if not isinstance(ended, RESULT_TYPES):  # a bug of the handler's: running it again
                # would only return the same, as many times as the item may be delivered
                raise GiveUp(f"the handler returned {type(ended).__name__}, not a result")
        except (Exception, asyncio.CancelledError) as exc:
            ended = exc
        finally:
            # Out of `_running` before anything more is awaited: a withdrawal coming while the
            # answer is sent would cancel it half done (neither answered, nak'd nor termed).
            # One coming from here on finds nothing running; the answer goes out, and the
            # coordinator ignores answers for the runs it withdraws work from.
            self._running.pop(task, None)
        withdrawn = key in self._withdrawn
        outcome = "cancelled" if withdrawn else self._outcome_of(ended, deliveries)
        self._handler_seconds[outcome].observe(time.monotonic() - started)
        if withdrawn:
            # Cancelled by the withdrawal, or ended anyway: nats-py's requests wait with
            # `wait_for`, which on Python 3.11 swallows a cancellation landing as their reply
            # arrives, and a handler may turn one into an error of its own.
            await self._drop(msg, item, key)
            return
        match ended:
            case asyncio.CancelledError():
                with contextlib.suppress(Exception):  # shutting down: someone else should do it
                    await asyncio.shield(msg.nak())
                raise ended
            case RetryLater() if deliveries >= self.max_deliver:
                reason = f"still not possible: {ended}"
                await self._fail(msg, item, reason, deliveries, ended.usage, ended.model)
            case RetryLater():
                await self._retry(msg, item, ended, ended.delay, ended.usage, ended.model)
            case GiveUp():
                await self._fail(msg, item, str(ended), deliveries, ended.usage, ended.model)
            case AwaitApproval():
                log.info("%s: %s", self.role, ended)
                waiting = ApprovalNeeded(
                    role=self.role,
                    approval_id=ended.approval_id,
                    action=ended.action,
                    detail=ended.detail,
                    reason=ended.reason,
                    usage=ended.usage,
                    model=_model_name(ended.model),
                )
                await self._finish(msg, item, waiting)
            case Exception():
                log.error("%s: handler failed on %s", self.role, item.msg_id, exc_info=ended)
                if deliveries >= self.max_deliver:
                    await self._fail(msg, item, f"{type(ended).__name__}: {ended}", deliveries)
                else:
                    await self._retry(msg, item, ended, None)
            case _:
                # One turn of the event loop before the result is encoded and sent: the
                # handlers of other items delivered together start first (a handler that
                # finishes at once would otherwise hold them back by its result's encoding
                # and checks).
                await asyncio.sleep(0)
                if await self._finish(msg, item, ended):
                    self.stats.handled += 1
                    self._handled.inc()

    async def _run_ended(self, msg: Msg, item: WorkItem) -> bool:
        if self.ended_runs is None:
            return False
        try:
            # Within a heartbeat interval: the item's heartbeats start only once this answers.
            interval = self._heartbeats.interval
            return await self.ended_runs.ended(item.run_id, item.trace_id, timeout=interval)
        except asyncio.CancelledError:  # the worker stops: someone else should do it, now
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise

    def _outcome_of(
        self, ended: Result | Exception | asyncio.CancelledError, deliveries: int
    ) -> str:
        """How a handler that was not withdrawn ended, as the handler-seconds metric counts."""
        retrying = "retry" if deliveries < self.max_deliver else "failed"
        match ended:
            case asyncio.CancelledError():
                return "cancelled"
            case RetryLater():
                return retrying
            case GiveUp():
                return "failed"
            case AwaitApproval():
                return "approval"
            case Exception():
                return retrying
        return "ok"

    async def _on_cancel(self, msg: Msg) -> None:
        """Withdraw the work a notice names: cancel its handler if it runs here, and remember
        it in case its item is yet to come (every worker hears every run's notices)."""
        try:
            notice = decode(msg.data, WorkCancelled)
        except MessageError as exc:
            log.warning("%s: ignoring a malformed cancellation: %s", self.role, exc)
            return
        withdrawn = (notice.run_id, notice.trace_id, notice.task_id, notice.attempt)
        self._withdrawn.add(withdrawn)
        for running, running_key in list(self._running.items()):
            if _withdraws(withdrawn, running_key) and not running.done():
                running.cancel()

    async def _drop(
        self, msg: Msg, item: WorkItem, key: WorkKey, what: str = "withdrawn work"
    ) -> None:
        """Term withdrawn work (or work of an ended run): no result, no redelivery. The
        coordinator ignores results of a run it cancelled or failed (the only runs it withdraws
        work from) or that is done, so none is lost. The key is forgotten once the term is
        sent and no other copy of the work runs here (cancelled by the same notice, it may not
        have seen it yet); kept if not, for the redelivery."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the withdrawal's cancellation, handled
            task.uncancel()
        log.info("%s: dropped %s %s", self.role, what, item.msg_id)
        try:
            await msg.term()
        except Exception as exc:
            log.warning("%s: could not term %s %s: %s", self.role, what, item.msg_id, exc)
            return
        if key not in self._running.values():
            self._withdrawn.discard(key)

    async def _retry(
        self,
        msg: Msg,
        item: WorkItem,
        exc: Exception,
        delay: float | None,
        usage: Usage | None = None,
        model: str = "",
    ) -> None:
        deliveries = delivery_count(msg)
        if delay is None:
            delay = self.retry_delays[min(deliveries, len(self.retry_delays)) - 1]
        log.info("%s: retrying %s in %.1fs: %s", self.role, item.msg_id, delay, exc)
        self.stats.retried += 1
        metrics.WORK_RETRIED.labels(self.role).inc()
        if usage is not None and usage != Usage():
            await self._report_spent(item, deliveries, str(exc), usage, model)
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)

    async def _report_spent(
        self, item: WorkItem, delivery: int, reason: str, usage: Usage, model: str = ""
    ) -> None:
        """Tell the coordinator what this delivery spent, and on which model, before the item
        goes back: stored before the nak, so whichever worker gets the item next, these tokens
        are counted, by this report alone (the next delivery reports, or answers with, only its
        own)."""
        report = msgspec.structs.replace(
            _answering(
                item,
                # the reason only helps a person reading the events; keep it well in LongText
                WorkRetried(
                    role=self.role,
                    delivery=delivery,
                    usage=usage,
                    reason=clip(reason, 2000),
                    model=_model_name(model),
                ),
            ),
            msg_id=retried_msg_id(item.msg_id, delivery),
        )
        try:
            await self._results.send(report)
        except Exception as exc:  # the bus is failing: the retry matters more than the count
            log.warning(
                "%s: could not report the usage of %s before retrying it: %s",
                self.role,
                item.msg_id,
                exc,
            )

    async def _fail(
        self,
        msg: Msg,
        item: WorkItem,
        reason: str,
        deliveries: int,
        usage: Usage | None = None,
        model: str = "",
    ) -> None:
        failed = WorkFailed(
            role=self.role,
            reason=clip(reason),
            deliveries=deliveries,
            usage=usage or Usage(),
            model=_model_name(model),
        )
        if await self._finish(msg, item, failed):  # (not sent: it comes back, and is counted then)
            self._count_failed()

    def _count_failed(self) -> None:
        self.stats.failed += 1
        self._failed.inc()

    async def _finish(self, msg: Msg, item: WorkItem, result: Result) -> bool:
        """Publish the result and only then ack. If publishing fails the message stays unacked
        and comes back after ack_wait. A result too big for one message is answered with a
        WorkFailed saying so at once (run again, the work would likely be as big). True only
        if the item was answered with `result`."""
        try:
            try:
                await self._results.send(_answering(item, result))
            except (ResultTooLarge, ResultInvalid) as exc:
                await self._results.send(_answering(item, self._unsendable(msg, result, exc)))
                await self.bus.publisher.ack(msg)
                self._count_failed()
                return False
            await self.bus.publisher.ack(msg)
        except Exception as exc:
            log.warning(
                "%s: could not deliver result of %s, leaving it unacked: %s",
                self.role,
                item.msg_id,
                exc,
            )
            return False
        return True

    def _unsendable(self, msg: Msg, result: Result, error: ValueError) -> WorkFailed:
        kind = type(result).__name__
        what = "too big to send" if isinstance(error, ResultTooLarge) else "not valid"
        reason = f"{kind} {what}: {error}"
        if isinstance(error, ResultTooLarge) and isinstance(result, CodeResult):
            # A coder sends its patch whole in its result, however large (it cannot write the
            # object store): the patch is what a person must know is too large.
            reason = (
                f"{kind} too big to send: its patch of {len(result.patch.text)} characters is too "
                f"large for one message: {error}; "
                + error.remedy("split the task into smaller ones")
            )
        log.warning("%s: %s", self.role, reason)
        return WorkFailed(
            role=self.role,
            reason=clip(reason),
            deliveries=delivery_count(msg),
            # what the work spent still counts, and on which model (both bounded: either may be
            # what made the result invalid)
            usage=getattr(result, "usage", Usage()).within_bounds(),
            model=_model_name(getattr(result, "model", "")),
        )

    async def _dead_letter(self, msg: Msg, error: MessageError) -> None:
        """Hand work no one can decode to the coordinator, as a dead letter on this role's
        result subject, and ack it. The coordinator files it on the events stream, which
        workers may not write: one that could would forge any run's events (a run's end, a
        gate's audit). Its id names the stored message, so delivered again it is stored once."""
        log.warning(
            "%s: dead-lettering undecodable message on %s: %s", self.role, msg.subject, error
        )
        payload = bytes(msg.data)
        letter = UndecodableWork(
            run_id=_run_id_of(payload),
            msg_id=result_msg_id(f"{subjects.WORK_STREAM}:{msg.metadata.sequence.stream}"),
            error=str(error),  # a MessageError's text is bounded well within a LongText
            payload=payload[:DEAD_LETTER_PAYLOAD_LIMIT].decode("utf-8", errors="replace"),
            payload_bytes=len(payload),
        )
        try:
            await self.bus.publish(subjects.result_subject(self.role), letter)
            await self.bus.publisher.ack(msg)
            self.stats.dead_lettered += 1
            metrics.WORK_DEAD_LETTERED.labels(self.role).inc()
        except Exception as exc:
            log.warning("%s: could not record dead letter, leaving it unacked: %s", self.role, exc)
