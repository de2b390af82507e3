"""A run's test command (`SubmitRun.test_command`, kept as `Run.test_command`, sent in every
`TestRequest` and `PlanRequest`): optional on the wire, so what older clients, coordinators
and stored records wrote still decodes, as "detected"; bounded, and never holding a NUL."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from codeyard.agents.policy import load_policy
from codeyard.schemas import (
    Control,
    MessageError,
    Patch,
    PlanRequest,
    Run,
    SubmitRun,
    TaskSpec,
    TestRequest,
    WorkItem,
    decode,
    encode,
)
from codeyard.schemas.model import TEST_COMMAND_CHARS

TASK = {"id": "t", "title": "t"}
# Each as an older version wrote it: no test_command at all.
OLDER: list[tuple[type[Any], Any, dict[str, Any]]] = [
    (SubmitRun, Control, {"type": "SubmitRun", "run_id": "r1", "goal": "g"}),
    (TestRequest, WorkItem, {"type": "TestRequest", "run_id": "r1", "task": TASK, "patch": {}}),
    (PlanRequest, WorkItem, {"type": "PlanRequest", "run_id": "r1", "goal": "g"}),
]


@pytest.mark.parametrize(("cls", "union", "wire"), OLDER, ids=lambda v: getattr(v, "__name__", ""))
def test_a_message_written_before_the_field_decodes_as_detected(
    cls: type[Any], union: Any, wire: dict[str, Any]
) -> None:
    message = decode(msgspec.json.encode(wire), union)
    assert isinstance(message, cls)
    assert message.test_command == ""


def test_a_run_stored_before_the_field_decodes_as_detected() -> None:
    stored = msgspec.json.encode({"run_id": "r1", "goal": "g", "state": "executing"})
    assert msgspec.json.decode(stored, type=Run).test_command == ""


@pytest.mark.parametrize(
    "command", ["make test", "go test ./...", "cd tests && cargo test 2>&1 | tail -n 20\nexit 0"]
)
def test_the_command_survives_the_wire_as_written(command: str) -> None:
    submit = SubmitRun(run_id="r1", goal="g", test_command=command)
    decoded = decode(encode(submit), Control)
    assert isinstance(decoded, SubmitRun)
    assert decoded.test_command == command
    run = Run(run_id="r1", goal="g", test_command=command)
    assert msgspec.json.decode(msgspec.json.encode(run), type=Run).test_command == command


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("x" * (TEST_COMMAND_CHARS + 1), f"Expected `str` of length <= {TEST_COMMAND_CHARS}"),
        ("make\x00test", "Expected `str` matching regex"),
    ],
    ids=["too-long", "nul"],
)
def test_a_command_too_long_or_with_a_nul_is_refused_naming_the_field(
    command: str, reason: str
) -> None:
    messages: list[tuple[Any, Any]] = [
        (SubmitRun(run_id="r1", goal="g", test_command=command), Control),
        (
            TestRequest(
                run_id="r1", task=TaskSpec(id="t", title="t"), patch=Patch(), test_command=command
            ),
            WorkItem,
        ),
        (PlanRequest(run_id="r1", goal="g", test_command=command), WorkItem),
    ]
    for message, union in messages:
        with pytest.raises(MessageError) as refused:
            decode(encode(message), union)
        assert refused.value.field == "$.test_command"
        assert reason in refused.value.reason
    stored = msgspec.json.encode(Run(run_id="r1", goal="g", test_command=command))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.test_command"):
        msgspec.json.decode(stored, type=Run)


def test_the_longest_command_allowed_is_the_gates_own_limit() -> None:
    """What the wire carries, the default policy still parses (a longer line it would send to
    a person unread)."""
    assert load_policy(None).spec.shell.max_command_chars == TEST_COMMAND_CHARS
