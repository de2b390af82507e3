"""The safety gate: answers `cy.gate.check` with allow, deny or needs_approval.

Every decision is appended to the run's events (`GateAudit`) before it is answered, so the audit
holds every decision that any role acted on. A `needs_approval` decision records a question in
`cy_approvals` for a person (`codeyard approve ID` / `codeyard deny ID`); the asker parks its
task, and when the work comes back after the answer the same check finds it there: approved ->
allow, denied -> deny. A check with `require_approval` (a run's merge checkpoint) needs a person
even where the policy allows; nothing a policy denies can be approved. Several gates may run:
they share the queue group `safety-gate`.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from nats.aio.subscription import Subscription

from codeyard.bus import Bus, StaleRevision, VersionedStore, subjects
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

log = logging.getLogger(__name__)


class Verdict(Protocol):
    @property
    def decision(self) -> Literal["allow", "deny", "needs_approval"]: ...
    @property
    def reason(self) -> str: ...
    @property
    def rule(self) -> str: ...


class ActionPolicy(Protocol):
    def evaluate(self, check: ActionCheck) -> Verdict: ...


class SafetyGate:
    def __init__(self, bus: Bus, policy: ActionPolicy) -> None:
        self.bus = bus
        self.policy = policy

    async def serve(self) -> Subscription:
        approvals = await self.bus.store(subjects.APPROVALS_BUCKET, PendingApproval)

        async def decide(check: ActionCheck) -> Envelope:
            verdict = self.policy.evaluate(check)
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
                    check=check,
                    decision=decision_message,
                )
            )
            log.info("gate: %s %s -> %s (%s)", check.action, check.detail[:80], decision, rule)
            GATE_DECISIONS.labels(check.action, decision).inc()
            return decision_message

        def refuse(exc: Exception) -> Envelope:
            # An unreadable or failing check is never allowed.
            where = f" at {exc.field}" if isinstance(exc, MessageError) and exc.field else ""
            GATE_DECISIONS.labels("invalid", "deny").inc()
            return GateDecision(decision="deny", reason=f"bad check{where}: {exc}", rule="invalid")

        async def decide_naming_the_task(check: ActionCheck) -> Envelope:
            with working_on(check.run_id, check.task_id, check.attempt):  # for the log lines
                return await decide(check)

        return await self.bus.serve(
            subjects.GATE_CHECK,
            ActionCheck,
            decide_naming_the_task,
            refuse,
            queue=subjects.GATE_QUEUE,
        )

    @staticmethod
    async def _ask_or_recall(
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
                return None if known.value.status == "pending" else known.value
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


def approval_id_of(check: ActionCheck) -> str:
    """The same check (run, task, attempt, action, detail) always gets the same approval, so
    work that comes back after an approval finds its answer; a new attempt asks anew."""
    digest = derived_id(check.run_id, check.task_id, check.attempt, check.action, check.detail)
    return digest[:16]
