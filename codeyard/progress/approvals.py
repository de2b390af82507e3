"""Answering a run's approvals from `codeyard run` itself: at a prompt, or all of them (`--yes`).

Events say *that* something waits (a gate audit, a run or task parked for approval); the
approval itself, with its id, is asked of the coordinator (`ListApprovals`), which may lag the
event by a moment, so a nudge looks a few times before concluding there is nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from codeyard.bus import Bus
from codeyard.cancellation import stop_tasks
from codeyard.follow import DETAIL_SHOWN, RunRefused, ask_coordinator
from codeyard.progress.view import WAITING_RUN_STATES
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    ControlError,
    Deny,
    GateAudit,
    ListApprovals,
    PendingApproval,
    RunEvent,
    RunStateChanged,
    TaskState,
    TaskStatesChanged,
)
from codeyard.terminal_text import quoted_detail, terminal_safe

log = logging.getLogger(__name__)

Decide = Callable[[PendingApproval], Awaitable[bool | None]]
"""True approves, False denies, None leaves it to someone else (`codeyard approve`)."""


def waits_for_a_person(event: RunEvent) -> bool:
    match event:
        case GateAudit():
            return event.decision.decision == "needs_approval"
        case RunStateChanged():
            return event.state in WAITING_RUN_STATES
        case TaskStatesChanged():
            return any(change.state is TaskState.AWAITING_APPROVAL for change in event.changes)
        case _:
            return False


def describe_approval(approval: PendingApproval) -> str:
    if approval.action == "plan":  # the coordinator's words: the plan, a task a line
        return terminal_safe(approval.detail.strip(), lines=True)
    detail = quoted_detail(approval.detail, DETAIL_SHOWN)
    task = f"{approval.task_id}: " if approval.task_id else ""
    return f"{task}{approval.action} {detail}" + (
        f" ({terminal_safe(approval.reason)})" if approval.reason else ""
    )


class InlineApprovals:
    """Answers the pending approvals of one run as `decide` says, one at a time."""

    def __init__(
        self,
        bus: Bus,
        run_id: str,
        decide: Decide,
        say: Callable[[str], None],
        by: str,
        looks: int = 20,
        pause: float = 0.25,
    ) -> None:
        self._bus = bus
        self._run_id = run_id
        self._decide = decide
        self._say = say
        self._by = by
        self._looks = looks
        self._pause = pause
        self._seen: set[str] = set()
        self._checking: asyncio.Task[None] | None = None
        self._again = False

    def nudge(self) -> None:
        """Something may wait: look (again, once the current look is over)."""
        if self._checking is not None and not self._checking.done():
            self._again = True
            return
        self._checking = asyncio.create_task(self._check())

    async def close(self) -> None:
        if self._checking is not None:
            await stop_tasks([self._checking])  # it loops on nats-py requests

    async def _check(self) -> None:
        while True:
            self._again = False
            try:
                await self._answer_new()
            except RunRefused as exc:
                log.warning("cannot list approvals: %s", exc)
            if not self._again:
                return

    async def _answer_new(self) -> None:
        for _ in range(self._looks):
            new = [a for a in await self._pending() if a.approval_id not in self._seen]
            if new:
                for approval in new:
                    self._seen.add(approval.approval_id)
                    await self._answer(approval)
                return
            await asyncio.sleep(self._pause)

    async def _pending(self) -> list[PendingApproval]:
        asked = ListApprovals(run_id=self._run_id)  # those of other runs may fill a reply
        reply = await ask_coordinator(self._bus, "approvals", asked, patience=10)
        if not isinstance(reply, ApprovalList):
            raise RunRefused(f"unexpected reply {type(reply).__name__}")
        # (a coordinator older than ListApprovals.run_id lists every run's)
        return [a for a in reply.approvals if a.run_id == self._run_id]

    async def _answer(self, approval: PendingApproval) -> None:
        approved = await self._decide(approval)
        if approved is None:
            return
        request = (
            Approve(approval_id=approval.approval_id, by=self._by, comment="from codeyard run")
            if approved
            else Deny(approval_id=approval.approval_id, by=self._by, reason="denied at the prompt")
        )
        verb, done = ("approve", "approved") if approved else ("deny", "denied")
        reply = await ask_coordinator(self._bus, verb, request, patience=10)
        if isinstance(reply, Accepted):
            self._say(f"{done} {approval.approval_id}: {describe_approval(approval)}")
        else:
            why = reply.error if isinstance(reply, ControlError) else type(reply).__name__
            self._say(f"could not {verb} {approval.approval_id}: {why}")
