"""The model a result names (and the `UsageReported` event the coordinator makes of it): optional
on the wire, so what older workers and coordinators wrote still decodes, naming none; bounded,
so an endpoint's name cannot grow a result without end."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from codeyard.schemas import (
    MessageError,
    ResultMessage,
    ReviewResult,
    RunEvent,
    Usage,
    UsageReported,
    decode,
    encode,
)
from codeyard.schemas.model import SHORT_TEXT_CHARS

TASK = {"id": "t", "title": "t"}
USAGE = {"calls": 1, "prompt_tokens": 10, "completion_tokens": 2}
TOO_LONG = "m" * (SHORT_TEXT_CHARS + 1)
RESULT = {"run_id": "r1", "task_id": "t", "attempt": 1, "usage": USAGE}
# Each as a version before the field wrote it: usage, and no model.
OLDER: list[tuple[Any, dict[str, Any]]] = [
    (ResultMessage, {"type": "PlanResult", "tasks": [TASK]}),
    (ResultMessage, {"type": "CodeResult", "patch": {}}),
    (ResultMessage, {"type": "TestResult", "passed": True}),
    (ResultMessage, {"type": "ReviewResult", "approved": True}),
    (ResultMessage, {"type": "WorkFailed", "role": "coder", "reason": "gave up"}),
    (
        ResultMessage,
        {
            "type": "ApprovalNeeded",
            "role": "tester",
            "approval_id": "a1",
            "action": "run_command",
            "detail": "make",
        },
    ),
    (ResultMessage, {"type": "WorkRetried", "role": "coder", "delivery": 1}),
    (RunEvent, {"type": "UsageReported", "role": "coder"}),
]


@pytest.mark.parametrize(("union", "wire"), OLDER, ids=[wire["type"] for _, wire in OLDER])
def test_a_message_written_before_the_field_decodes_naming_no_model(
    union: Any, wire: dict[str, Any]
) -> None:
    message = decode(msgspec.json.encode(RESULT | wire), union)
    assert type(message).__name__ == wire["type"]
    assert message.usage.calls == 1
    assert message.model == ""


@pytest.mark.parametrize(
    ("message", "union"),
    [
        (ReviewResult(run_id="r1", approved=True, model=TOO_LONG), ResultMessage),
        (UsageReported(run_id="r1", role="review", usage=Usage(calls=1), model=TOO_LONG), RunEvent),
    ],
    ids=["ReviewResult", "UsageReported"],
)
def test_a_model_name_over_the_bound_is_refused_naming_the_field(message: Any, union: Any) -> None:
    with pytest.raises(MessageError) as refused:
        decode(encode(message), union)
    assert refused.value.field == "$.model"
