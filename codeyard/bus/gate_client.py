"""Asking the safety gate (`cy.gate.check`) before a side effect.

Roles and the coordinator hold a `GateClient`; `BusGateClient` is the one that asks the gate
service over NATS. Nothing is ever done without an answer: when no gate answers in time the
caller gets `GateUnavailable` and must wait and ask again, never proceed.
"""

from __future__ import annotations

from typing import Protocol

import nats.errors

from codeyard.bus import subjects
from codeyard.bus.connection import Bus
from codeyard.bus.worker import AwaitApproval, GiveUp, RetryLater
from codeyard.schemas import ActionCheck, GateDecision
from codeyard.schemas.envelope import Envelope
from codeyard.schemas.messages import ActionKind
from codeyard.schemas.model import Usage


class GateUnavailable(RuntimeError):
    """No safety gate answered; the action must wait."""


class GateClient(Protocol):
    async def check(self, check: ActionCheck) -> GateDecision:
        """The gate's decision on `check`; `GateUnavailable` when no gate answers."""
        ...


class BusGateClient:
    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus = bus
        self.timeout = timeout

    async def check(self, check: ActionCheck) -> GateDecision:
        try:
            return await self.bus.request(
                subjects.GATE_CHECK, check, GateDecision, timeout=self.timeout
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise GateUnavailable(
                f"no safety gate answered on {subjects.GATE_CHECK} within {self.timeout:g}s "
                "(is `codeyard gate` running?)"
            ) from exc


async def require_clearance(
    gate: GateClient,
    about: Envelope,
    action: ActionKind,
    detail: str,
    *,
    role: str,
    spent: Usage | None = None,
    model: str = "",
) -> None:
    """For a worker handling `about`: return only if the gate allows the action; otherwise
    raise what a handler raises: `GiveUp` (denied), `AwaitApproval` (a person decides),
    `RetryLater` (no gate answered), each carrying `spent` (what the work spent so far, e.g.
    on the LLM) and `model` (the LLM model that answered, "" if none), so that the run counts
    it, and names the model, whatever the gate says."""
    check = ActionCheck(
        run_id=about.run_id,
        task_id=about.task_id,
        attempt=about.attempt,
        trace_id=about.trace_id,
        action=action,
        detail=detail,
        role=role,
    )
    try:
        decision = await gate.check(check)
    except GateUnavailable as exc:
        raise RetryLater(str(exc), delay=5.0, usage=spent, model=model) from exc
    if decision.decision == "allow":
        return
    if decision.decision == "needs_approval":
        raise AwaitApproval(
            decision.approval_id, action, detail, decision.reason, usage=spent, model=model
        )
    raise GiveUp(
        f"the safety gate denied {action} {detail!r}: {decision.reason} ({decision.rule})",
        usage=spent,
        model=model,
    )
