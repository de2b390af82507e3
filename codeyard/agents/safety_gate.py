"""The safety gate: answers `cy.gate.check` with allow, deny or needs_approval.

Every decision is appended to the run's events (`GateAudit`) before it is answered, so the audit
holds every decision that any role acted on. A `needs_approval` decision also records a pending
approval in `cy_approvals` for a person to answer. Several gates may run: they share the queue
group `safety-gate`.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from nats.aio.subscription import Subscription

from codeyard.bus import Bus, subjects
from codeyard.coordinator.work_items import derived_id
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
            approval_id = ""
            if verdict.decision == "needs_approval":
                approval_id = derived_id(check.run_id, check.task_id, check.msg_id)[:16]
                await approvals.put(
                    approval_id,
                    PendingApproval(
                        approval_id=approval_id,
                        run_id=check.run_id or "_unrouted",
                        task_id=check.task_id,
                        action=check.action,
                        detail=check.detail,
                        reason=verdict.reason,
                    ),
                )
            decision = GateDecision(
                run_id=check.run_id,
                task_id=check.task_id,
                attempt=check.attempt,
                trace_id=check.trace_id,
                decision=verdict.decision,
                reason=verdict.reason,
                rule=verdict.rule,
                approval_id=approval_id,
            )
            await self.bus.emit(
                GateAudit(
                    run_id=check.run_id,
                    task_id=check.task_id,
                    attempt=check.attempt,
                    trace_id=check.trace_id,
                    check=check,
                    decision=decision,
                )
            )
            log.info(
                "gate: %s %s -> %s (%s)",
                check.action,
                check.detail[:80],
                verdict.decision,
                verdict.rule,
            )
            return decision

        def refuse(exc: Exception) -> Envelope:
            # An unreadable or failing check is never allowed.
            where = f" at {exc.field}" if isinstance(exc, MessageError) and exc.field else ""
            return GateDecision(decision="deny", reason=f"bad check{where}: {exc}", rule="invalid")

        return await self.bus.serve(
            subjects.GATE_CHECK, ActionCheck, decide, refuse, queue=subjects.GATE_QUEUE
        )
