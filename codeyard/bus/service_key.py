"""The key the coordinators and the safety gate share, and what it proves on the bus.

NATS permissions say who may publish on a subject, but JetStream publishes *for* a client (a
direct get's answer, a consumer's deliveries) to whatever subject that client names, whatever
it may publish itself. A worker can so have stored bytes of its choosing (a large patch's text
in `cy_artifacts`) replayed onto another role's result subject, or into `cy_approvals`. So:

- each work item carries a proof, a MAC of what it is (its role, run, submission, task and
  attempt), which its answer must copy: a worker learns the proofs of its own role's work
  alone, and one proof answers nothing else (a coder cannot pass its own task's tests and
  review);
- an answered approval in `cy_approvals` carries a seal, a MAC of the question and the answer:
  the gate honours only answers the coordinator recorded (a person's approve or deny);
- the leader lease's record is sealed too (`codeyard.coordinator.lease`).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec

from codeyard.schemas.messages import PendingApproval

MAC_CHARS = 32  # 128 bits, as hex
MIN_KEY_CHARS = 32


class ServiceKey:
    """Makes and checks the proofs and seals of one deployment's key."""

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"the key has {len(key)} characters: at least {MIN_KEY_CHARS}")
        self._key = key.encode()

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(32)

    def work_proof(self, role: str, run_id: str, trace_id: str, task_id: str, attempt: int) -> str:
        """The proof of the work `role` is sent for the task's `attempt` (task "": planning)
        of the run's submission `trace_id`."""
        return self._mac(["work", role, run_id, trace_id, task_id, attempt])

    def proves(
        self, proof: str, role: str, run_id: str, trace_id: str, task_id: str, attempt: int
    ) -> bool:
        """Whether `proof` is that of the work it claims to answer, on `role`'s subject."""
        return _same(proof, self.work_proof(role, run_id, trace_id, task_id, attempt))

    def seal(self, approval: PendingApproval) -> str:
        """The seal of an answered approval: of what was asked and what was answered."""
        a = approval
        asked: list[str | int] = [a.approval_id, a.run_id, a.task_id, a.attempt, a.action]
        return self._mac(["approval", *asked, a.status, a.answered_by, a.answer])

    def sealed(self, approval: PendingApproval) -> bool:
        return _same(approval.seal, self.seal(approval))

    def lease_seal(self, holder: str) -> str:
        """The seal of the leader lease's record naming `holder`."""
        return self._mac(["lease", holder])

    def seals_lease(self, holder: str, seal: str) -> bool:
        return _same(seal, self.lease_seal(holder))

    def _mac(self, parts: list[str | int]) -> str:
        what = msgspec.json.encode(parts)  # (unambiguous, whatever a part holds)
        return hmac.new(self._key, what, hashlib.sha256).hexdigest()[:MAC_CHARS]


def _same(given: str, expected: str) -> bool:
    return given.isascii() and hmac.compare_digest(given, expected)  # (ASCII str only)
