"""`ServiceKey`: the proofs of work items and the seals of answered approvals."""

from __future__ import annotations

import msgspec
import pytest

from codeyard.bus.service_key import ServiceKey
from codeyard.schemas.messages import PendingApproval

KEY = "k" * 43


def test_a_proof_names_one_piece_of_work() -> None:
    key = ServiceKey(KEY)
    proof = key.work_proof("review", "r1", "trace", "a", 1)
    assert key.proves(proof, "review", "r1", "trace", "a", 1)
    others = [
        ("coder", "r1", "trace", "a", 1),  # another role's
        ("review", "r2", "trace", "a", 1),  # another run's
        ("review", "r1", "other", "a", 1),  # another submission of the run
        ("review", "r1", "trace", "b", 1),  # another task's
        ("review", "r1", "trace", "a", 2),  # another attempt's
    ]
    assert not any(key.proves(proof, *other) for other in others)
    another_key = ServiceKey("x" * 43).work_proof("review", "r1", "trace", "a", 1)
    assert not key.proves(another_key, "review", "r1", "trace", "a", 1)
    assert not key.proves("", "review", "r1", "trace", "a", 1)
    assert not key.proves("é" * 32, "review", "r1", "trace", "a", 1)


def test_a_seal_covers_the_question_and_its_answer() -> None:
    key = ServiceKey(KEY)
    asked = PendingApproval(
        approval_id="ap1", run_id="r1", task_id="a", attempt=1, action="merge", detail="diff"
    )
    answered = msgspec.structs.replace(asked, status="approved", answered_by="ann", answer="ok")
    sealed = msgspec.structs.replace(answered, seal=key.seal(answered))
    assert key.sealed(sealed)
    assert not key.sealed(answered)  # no seal
    changed: list[dict[str, object]] = [
        {"status": "denied"},
        {"answered_by": "mallory"},
        {"answer": "fine by me"},
        {"approval_id": "ap2"},
        {"run_id": "r2"},
        {"task_id": "b"},
        {"attempt": 2},
        {"action": "command"},
    ]
    for change in changed:
        assert not key.sealed(msgspec.structs.replace(sealed, **change)), change
    assert not ServiceKey("x" * 43).sealed(sealed)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ServiceKey("short")
    assert len(ServiceKey.new_key()) >= 32
