"""The safety gate: answers `cy.gate.check` with allow, deny or needs_approval.

Every decision is appended to the run's events (`GateAudit`) before it is answered, so the audit
holds every decision that any role acted on. A `needs_approval` decision records a question in
`cy_approvals` for a person (`codeyard approve ID` / `codeyard deny ID`); the asker parks its
task, and when the work comes back after the answer the same check finds it there: approved ->
allow, denied -> deny. A check with `require_approval` (a run's merge checkpoint) needs a person
even where the policy allows; nothing a policy denies can be approved. Several gates may run:
they share the queue group `safety-gate`.

The policy is evaluated off the event loop, in processes of its own (a regex that backtracks
holds the interpreter for as long as it runs: a thread would not let the gate answer anything
else meanwhile), for at most `EVALUATION_TIME_LIMIT` seconds. A check it has not decided by then
needs a person (rule `gate.time-limit`; `gate.busy` when no process was free the whole time),
never allow; the process that overran is killed and another started in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from codeyard.bus import Bus, StaleRevision, VersionedStore, subjects
from codeyard.bus.service_key import ServiceKey
from codeyard.coordinator.work_items import derived_id
from codeyard.observability.context import working_on
from codeyard.observability.metrics import GATE_DECISIONS
from codeyard.schemas import (
    ActionCheck,
    Envelope,
    GateAudit,
    GateDecision,
    MessageError,
    PendingApproval,
)
from codeyard.schemas.codec import decode, encode

log = logging.getLogger(__name__)

# How long the policy may take over one check. Askers wait 10 s for an answer (`BusGateClient`),
# and the answer still has to be audited (and a question stored) after the evaluation; an
# ordinary check takes milliseconds, a megabyte of diff about a second.
EVALUATION_TIME_LIMIT = 5.0
# How many checks may be evaluated at once, each in a process of its own. While all are busy a
# check waits for one within its time limit, and past it needs a person too.
EVALUATION_PROCESSES = 2

# Policy processes are forked from a server process started once, which has imported the policy
# engine (a fork of the gate itself would copy its event loop, sockets and signal handlers).
_PROCESSES = multiprocessing.get_context("forkserver")
_PRELOAD = ["codeyard.agents.policy", "codeyard.agents.safety_gate"]
_START_TIMEOUT = 60.0  # for a policy process to come up (the first also starts the server)
_RESTART_DELAY = 5.0  # after a policy process could not be started
# Checks answered at once. The subscription hands its messages over one at a time; each is
# answered in a task of its own so that one the policy is slow on does not hold up the others.
_CHECKS_AT_ONCE = 64
# The most of a check's detail its audit record keeps (the diff of a merge may fill a message).
AUDIT_DETAIL_CHARS = 64_000
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Verdict(Protocol):
    @property
    def decision(self) -> Literal["allow", "deny", "needs_approval"]: ...
    @property
    def reason(self) -> str: ...
    @property
    def rule(self) -> str: ...


class ActionPolicy(Protocol):
    def evaluate(self, check: ActionCheck) -> Verdict:
        """The policy's verdict. Called in a policy process: the policy is pickled there."""
        ...


class PolicyFailed(Exception):
    """The policy raised on a check: the check is refused (asked again, it would fail again)."""


@dataclass(frozen=True)
class _GateVerdict:
    decision: Literal["allow", "deny", "needs_approval"]
    reason: str
    rule: str


def _evaluate_forever(connection: Connection, policy: ActionPolicy) -> None:
    """A policy process: evaluate each check received, one at a time, until the gate closes the
    connection. Killed when the process it was forked from ends (it ends with the gate)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the gate, which ends this
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        connection.send("ready")  # the policy is unpickled: checks can come
    except OSError:
        return
    while True:
        try:
            check = connection.recv()
        except (EOFError, OSError):
            return
        try:
            verdict = policy.evaluate(check)
            reply = (verdict.decision, verdict.reason, verdict.rule, "")
        except Exception as exc:  # the gate refuses the check, naming this
            reply = ("deny", "", "", f"{type(exc).__name__}: {exc}")
        try:
            connection.send(reply)
        except OSError:
            return


class _PolicyProcess:
    """The gate's end of one policy process."""

    def __init__(self, policy: ActionPolicy) -> None:
        """Start it and wait until it can evaluate (blocks: call it in a thread)."""
        ours, theirs = _PROCESSES.Pipe()
        self.process = _PROCESSES.Process(
            target=_evaluate_forever, args=(theirs, policy), name="gate-policy", daemon=True
        )
        self.connection = ours
        self.process.start()
        theirs.close()
        try:
            if not ours.poll(_START_TIMEOUT) or ours.recv() != "ready":
                raise RuntimeError(f"no policy process up within {_START_TIMEOUT:g} s")
        except BaseException:  # EOFError: it died while it started
            self.stop()
            raise

    async def evaluate(self, check: ActionCheck) -> Verdict | str:
        """The policy's verdict, or what it raised."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not answered.done():
                answered.set_result(None)

        try:
            await asyncio.to_thread(self.connection.send, check)  # a big diff fills the pipe
            fd = self.connection.fileno()
            loop.add_reader(fd, readable)
            try:
                await answered
            finally:
                loop.remove_reader(fd)
            decision, reason, rule, error = self.connection.recv()  # short, written whole
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"the policy process ended before it decided: {exc!r}") from exc
        return error or _GateVerdict(decision, reason, rule)

    def stop(self) -> None:
        """End it now, whatever it is doing."""
        self.connection.close()
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()


class _Evaluations:
    """`processes` policy processes, each evaluating one check at a time. One that does not
    answer within the time limit is killed, and another started in its place."""

    def __init__(self, policy: ActionPolicy, processes: int) -> None:
        self.policy = policy
        self.processes = processes
        self.running = 0  # checks being evaluated
        self._idle: asyncio.Queue[_PolicyProcess] = asyncio.Queue()
        self._all: set[_PolicyProcess] = set()
        self._starting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start every process (the first start also starts the server they are forked
        from: a second or two)."""
        _PROCESSES.set_forkserver_preload(_PRELOAD)
        for started in await asyncio.gather(
            *(asyncio.to_thread(_PolicyProcess, self.policy) for _ in range(self.processes))
        ):
            self._add(started)

    def _add(self, process: _PolicyProcess) -> None:
        self._all.add(process)
        self._idle.put_nowait(process)

    def _replace(self, process: _PolicyProcess) -> None:
        process.stop()
        self._all.discard(process)

        async def start_another() -> None:
            while True:
                try:
                    self._add(await asyncio.to_thread(_PolicyProcess, self.policy))
                    return
                except Exception:
                    log.exception("gate: a policy process did not start; trying again")
                    await asyncio.sleep(_RESTART_DELAY)

        task = asyncio.create_task(start_another())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def run(self, check: ActionCheck, limit: float) -> Verdict | Literal["busy", "slow"]:
        """The policy's verdict on `check`, or "busy" (no process free within `limit` seconds)
        or "slow" (not answered within them, the wait for a process included)."""
        process: _PolicyProcess | None = None
        try:
            async with asyncio.timeout(limit):
                process = await self._idle.get()
                self.running += 1
                try:
                    outcome = await process.evaluate(check)
                finally:
                    self.running -= 1
        except TimeoutError:
            if process is None:
                return "busy"
            self._replace(process)  # it may evaluate for minutes yet
            return "slow"
        except BaseException:  # cancelled, or the process broke: it is not reused
            if process is not None:
                self._replace(process)
            raise
        self._idle.put_nowait(process)
        if isinstance(outcome, str):  # the asker's handler refuses the check
            raise PolicyFailed(f"the policy failed: {outcome}")
        return outcome

    def close(self) -> None:
        for task in self._starting:
            task.cancel()
        for process in self._all:
            process.stop()
        self._all.clear()


class SafetyGate:
    def __init__(
        self,
        bus: Bus,
        policy: ActionPolicy,
        *,
        time_limit: float = EVALUATION_TIME_LIMIT,
        processes: int = EVALUATION_PROCESSES,
        service_key: ServiceKey | None = None,
    ) -> None:
        """With a `service_key`, only answers the coordinator sealed with it are honoured."""
        if time_limit <= 0 or processes < 1:
            raise ValueError("the time limit must be positive and there must be a process")
        self.bus = bus
        self.service_key = service_key
        self.policy = policy
        self.time_limit = time_limit
        self._evaluations = _Evaluations(policy, processes)
        self._answering: set[asyncio.Task[None]] = set()

    @property
    def evaluations_running(self) -> int:
        """Checks the policy is evaluating now."""
        return self._evaluations.running

    def close(self) -> None:
        """Stop the policy processes (they also end when the gate's process does)."""
        self._evaluations.close()

    async def _evaluate(self, check: ActionCheck) -> Verdict:
        """The policy's verdict, or needs_approval if it does not come within the time limit:
        what the gate could not check is never allowed."""
        outcome = await self._evaluations.run(check, self.time_limit)
        if outcome == "slow":
            log.warning(
                "gate: the policy took over %gs on %s (%d characters); a person decides",
                self.time_limit,
                check.action,
                len(check.detail),
            )
            return _GateVerdict(
                "needs_approval",
                f"the check took too long: the policy did not decide this {check.action} within "
                f"{self.time_limit:g} s ({len(check.detail)} characters), so a person decides",
                "gate.time-limit",
            )
        if outcome == "busy":
            log.warning(
                "gate: no policy process free for %gs; %s goes to a person",
                self.time_limit,
                check.action,
            )
            return _GateVerdict(
                "needs_approval",
                f"the check took too long: the gate's {self._evaluations.processes} policy "
                f"processes were all busy with other checks for {self.time_limit:g} s, so a "
                "person decides",
                "gate.busy",
            )
        return outcome

    async def serve(self) -> Subscription:
        await self._evaluations.start()
        approvals = await self.bus.store(subjects.APPROVALS_BUCKET, PendingApproval)

        async def decide(check: ActionCheck) -> Envelope:
            verdict = await self._evaluate(check)
            decision, reason, rule = verdict.decision, verdict.reason, verdict.rule
            if decision == "allow" and check.require_approval:
                decision, rule = "needs_approval", f"checkpoint.{check.action}"
                reason = f"the run asks a person to approve each {check.action}"
            approval_id = ""
            if decision == "needs_approval":
                approval_id = approval_id_of(check)
                answered = await self._ask_or_recall(approvals, approval_id, check, reason, rule)
                if answered is not None:
                    by = f" by {answered.answered_by}" if answered.answered_by else ""
                    why = f": {answered.answer}" if answered.answer else ""
                    decision = "allow" if answered.status == "approved" else "deny"
                    reason = f"{answered.status}{by}{why} ({reason})"
                    rule = f"approval.{approval_id}"
            decision_message = GateDecision(
                run_id=check.run_id,
                task_id=check.task_id,
                attempt=check.attempt,
                trace_id=check.trace_id,
                decision=decision,
                reason=reason,
                rule=rule,
                approval_id=approval_id,
            )
            await self.bus.emit(
                GateAudit(
                    run_id=check.run_id,
                    task_id=check.task_id,
                    attempt=check.attempt,
                    trace_id=check.trace_id,
                    check=_audited(check),
                    decision=decision_message,
                )
            )
            # (quoted: the command's escapes and line breaks are shown, not obeyed)
            log.info("gate: %s %r -> %s (%s)", check.action, check.detail[:80], decision, rule)
            GATE_DECISIONS.labels(check.action, decision).inc()
            return decision_message

        def refuse(exc: Exception) -> Envelope:
            # An unreadable or failing check is never allowed.
            where = f" at {exc.field}" if isinstance(exc, MessageError) and exc.field else ""
            GATE_DECISIONS.labels("invalid", "deny").inc()
            return GateDecision(decision="deny", reason=f"bad check{where}: {exc}", rule="invalid")

        async def answer(msg: Msg) -> None:
            try:
                check = decode(msg.data, ActionCheck)
                with working_on(check.run_id, check.task_id, check.attempt):  # for log lines
                    reply = await decide(check)
            except (MessageError, PolicyFailed) as exc:
                reply = refuse(exc)
            except Exception:
                # The gate's own failure (the audit or the question not stored: NATS away a
                # moment), not the check's: no answer, so the asker asks again later, as when no
                # gate answers. A deny would fail the work for good and go unaudited.
                log.exception("gate: deciding a check failed; not answered, to be asked again")
                return
            if msg.reply:
                try:
                    await msg.respond(encode(reply))
                except Exception:  # the connection is gone: the asker will ask again
                    log.exception("gate: could not answer a check")

        places = asyncio.Semaphore(_CHECKS_AT_ONCE)

        async def take(msg: Msg) -> None:
            await places.acquire()  # past _CHECKS_AT_ONCE, checks wait in the subscription

            async def answer_in_place() -> None:
                try:
                    await answer(msg)
                finally:
                    places.release()

            task = asyncio.create_task(answer_in_place())
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

        return await self.bus.nc.subscribe(subjects.GATE_CHECK, queue=subjects.GATE_QUEUE, cb=take)

    async def _ask_or_recall(
        self,
        approvals: VersionedStore[PendingApproval],
        approval_id: str,
        check: ActionCheck,
        reason: str,
        rule: str,
    ) -> PendingApproval | None:
        """The person's answer to this very check if there is one; else make sure the question
        is recorded (once, however often the work comes back) and return None."""
        for _ in range(3):
            known = await approvals.get(approval_id)
            if known is not None:
                if known.value.status == "pending":
                    return None
                if self.service_key and not self.service_key.sealed(known.value):
                    # Not the coordinator's record of a person's answer: a worker can have
                    # JetStream replay bytes into cy_approvals (see `codeyard.bus.service_key`).
                    log.warning(
                        "approval %s: an answer (%s) the coordinator did not seal is ignored",
                        approval_id,
                        known.value.status,
                    )
                    return None
                return known.value
            question = PendingApproval(
                approval_id=approval_id,
                run_id=check.run_id or subjects.DEAD_LETTER_RUN,
                task_id=check.task_id,
                attempt=check.attempt,
                action=check.action,
                detail=_shown(check.detail),
                reason=reason,
                rule=rule,
            )
            try:
                await approvals.create(approval_id, question)
                return None
            except StaleRevision:  # another gate asked at the same moment: read its record
                continue
        return None


def _shown(detail: str, limit: int = 19_000) -> str:
    """What a person is shown of a long detail (a big diff): its start. The approval itself is
    bound to the whole detail through its id."""
    if len(detail) <= limit:
        return detail
    return f"{detail[:limit]}\n[... {len(detail) - limit} more characters ...]"


def _audited(check: ActionCheck, limit: int = AUDIT_DETAIL_CHARS) -> ActionCheck:
    """`check` as its audit record holds it: a long detail (a big diff, which one message
    carried as the check) cut to its start, with its length and digest, so that the record
    with the decision beside it still fits in one message."""
    if len(check.detail) <= limit:
        return check
    digest = hashlib.sha256(check.detail.encode()).hexdigest()
    cut = f"{_shown(check.detail, limit)} (sha256 of the whole: {digest})"
    return msgspec.structs.replace(check, detail=cut)


def approval_id_of(check: ActionCheck) -> str:
    """The same check (run, task, attempt, action, detail) always gets the same approval, so
    work that comes back after an approval finds its answer; a new attempt asks anew."""
    digest = derived_id(check.run_id, check.task_id, check.attempt, check.action, check.detail)
    return digest[:16]
