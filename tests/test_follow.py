"""What `codeyard run` and `codeyard logs` make of events, without a bus."""

from __future__ import annotations

from codeyard.follow import describe, log_lines
from codeyard.schemas import ActionCheck, GateAudit, GateDecision


def test_a_gated_action_whose_detail_is_only_whitespace_is_shown_not_a_traceback() -> None:
    """Any role may publish such an event; `codeyard logs RUN` ended in an IndexError."""
    asked = GateDecision(decision="needs_approval", reason="not in the policy", approval_id="x1")
    for detail in (" \n\t ", ""):
        audit = GateAudit(
            run_id="r1",
            task_id="a",
            check=ActionCheck(action="run_command", detail=detail),
            decision=asked,
        )
        assert describe(audit) == [
            "  a: run_command '' waits for a person: not in the policy",
            "    codeyard approve x1   or   codeyard deny x1",
        ]
        assert log_lines(audit)[0].endswith(
            "a: run_command '' waits for a person: not in the policy"
        )


def test_a_gated_action_shows_the_first_line_of_its_detail() -> None:
    asked = GateDecision(decision="needs_approval", reason="r", approval_id="x1")
    check = ActionCheck(action="run_command", detail="\n  make test\nmore\n")
    [first, _] = describe(GateAudit(run_id="r1", task_id="a", check=check, decision=asked))
    assert first == "  a: run_command 'make test' waits for a person: r"
