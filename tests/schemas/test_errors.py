"""Every way a message can be bad raises `MessageError`, whose `field` names the JSON path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from codeyard.schemas import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Control,
    MessageError,
    Result,
    WorkItem,
    decode,
    encode,
    messages,
)
from codeyard.schemas.envelope import Envelope
from codeyard.schemas.export import family_of
from tests.schemas.samples import sample_for

# Where a fault is the whole document (not JSON at all, too big), no single field is to blame;
# codec.py leaves `field` empty then. "$" would say the same thing.
WHOLE_MESSAGE = ("", "$")


def wire(cls: type[Envelope]) -> dict[str, Any]:
    """The sample of `cls` as a JSON object, to spoil one field of."""
    data = msgspec.json.decode(encode(sample_for(cls)))
    assert isinstance(data, dict)
    return data


def raw(obj: object) -> bytes:
    return msgspec.json.encode(obj)


def error_of(data: bytes | str, type_: Any) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode(data, type_)
    return info.value


def test_message_error_is_a_value_error_naming_its_field() -> None:
    err = error_of(b'{"type":"PlanRequest"}', WorkItem)
    assert isinstance(err, ValueError)
    assert err.field == "$.goal"
    assert "$.goal" in str(err)
    assert "goal" in err.reason


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "PlanRequest", "goal": ',
        b"not json",
        b'{"type": "PlanRequest", "goal": "x",}',
        b"",
        "{\"type\": 'PlanRequest'}",
    ],
)
def test_malformed_json(data: bytes | str) -> None:
    err = error_of(data, WorkItem)
    assert err.reason.startswith("malformed JSON")
    assert err.field in WHOLE_MESSAGE


# msgspec recurses once per level of nesting, in values it skips as in those it keeps, and
# raises RecursionError, not an error of its own, past its limit.
TOO_DEEP = 20_000


@pytest.mark.parametrize(
    ("data", "as_work"),
    [
        (
            b'{"type":"CodeRequest","run_id":' + b"[" * TOO_DEEP + b"]" * TOO_DEEP + b"}",
            "Expected `str`, got `array`",  # its type is wrong before its depth is
        ),
        (
            b'{"type":"CodeRequest","junk":' + b'{"a":' * TOO_DEEP + b"1" + b"}" * TOO_DEEP + b"}",
            "nested too deeply to decode",
        ),
        ("[" * TOO_DEEP + "]" * TOO_DEEP, "Expected `object`, got `array`"),
    ],
    ids=["known field", "unknown field", "whole message"],
)
def test_nesting_however_deep_is_a_message_error(data: bytes | str, as_work: str) -> None:
    assert error_of(data, WorkItem).reason == as_work
    err = error_of(data, Any)
    assert err.reason == "nested too deeply to decode"
    assert err.field in WHOLE_MESSAGE


def test_text_no_json_can_carry_is_a_message_error() -> None:
    err = error_of('{"type": "PlanRequest", "goal": "\ud800"}', WorkItem)
    assert err.reason.startswith("not valid Unicode text")
    assert err.field in WHOLE_MESSAGE


@pytest.mark.parametrize(
    ("cls", "family"),
    [
        (messages.PlanRequest, WorkItem),
        (messages.WorkFailed, Result),
        (messages.CancelRun, Control),
    ],
)
def test_bytes_that_are_not_utf8_are_a_message_error(cls: type[Envelope], family: Any) -> None:
    """Not a `UnicodeDecodeError`, which a service taking only `MessageError` would not catch."""
    data = wire(cls) | {"run_id": "MARK"}
    err = error_of(raw(data).replace(b'"MARK"', b'"\xff\xfe"'), family)
    assert err.reason.startswith("not valid UTF-8: invalid start byte at byte")
    assert err.field in WHOLE_MESSAGE


def test_an_error_quoting_a_huge_value_is_cut() -> None:
    """msgspec quotes an unknown tag whole: up to a megabyte, which the error is logged with and
    sent on in a dead letter."""
    data = wire(messages.PlanRequest)
    data["type"] = "A" * (MAX_MESSAGE_BYTES - 1000)
    err = error_of(raw(data), WorkItem)
    assert err.field == "$.type"
    assert err.reason.startswith("unknown message type 'AAAA")
    assert err.reason.endswith("characters cut]")
    assert len(str(err)) < 3000


def test_not_an_object() -> None:
    err = error_of(b'["PlanRequest"]', WorkItem)
    assert err.field == "$"


@pytest.mark.parametrize("tag", ["Nope", "planrequest", "Envelope", ""])
def test_unknown_type(tag: str) -> None:
    data = wire(messages.PlanRequest)
    data["type"] = tag
    err = error_of(raw(data), WorkItem)
    assert err.field == "$.type"
    assert "unknown message type" in err.reason


def test_type_of_another_family() -> None:
    """A result published on a work subject is refused, not mistaken for work."""
    err = error_of(encode(sample_for(messages.CodeResult)), WorkItem)
    assert err.field == "$.type"
    assert "CodeResult" in err.reason


def test_type_of_another_class_decoded_as_a_class() -> None:
    err = error_of(encode(sample_for(messages.CodeRequest)), messages.PlanRequest)
    assert err.field == "$.type"


def test_missing_type_in_a_union() -> None:
    data = wire(messages.PlanRequest)
    del data["type"]
    err = error_of(raw(data), WorkItem)
    assert err.field == "$.type"


@pytest.mark.parametrize(
    ("cls", "path", "union"),
    [
        (messages.PlanRequest, ("goal",), WorkItem),
        (messages.CodeRequest, ("task",), WorkItem),
        (messages.CodeRequest, ("task", "title"), WorkItem),
        (messages.TestResult, ("passed",), Result),
        (messages.ReviewResult, ("comments", 0, "text"), Result),
        (messages.Approve, ("approval_id",), Control),
        (messages.SubmitRun, ("plan", 0, "id"), Control),
    ],
)
def test_missing_field(cls: type[Envelope], path: tuple[str | int, ...], union: Any) -> None:
    data = wire(cls)
    node: Any = data
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    expected = "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)
    assert error_of(raw(data), union).field == expected
    assert error_of(raw(data), cls).field == expected


@pytest.mark.parametrize(
    ("cls", "key", "value"),
    [
        (messages.PlanRequest, "goal", 5),
        (messages.PlanRequest, "attempt", "1"),
        (messages.PlanRequest, "constraints", "one"),
        (messages.TestResult, "passed", "yes"),
        (messages.TestResult, "tests_run", 1.5),
        (messages.CodeResult, "patch", "diff --git"),
        (messages.RunStateChanged, "state", "sleeping"),
        (messages.ActionCheck, "action", "rm_rf"),
        (messages.GateDecision, "decision", "maybe"),
        (messages.PlanRequest, "sent_at", "yesterday"),
        (messages.PlanRequest, "schema_version", "1"),
        (messages.ReviewResult, "reviewer", "reviewer.x"),
        (messages.CancelRun, "reason", "x" * 201),
    ],
)
def test_wrong_type_or_value(cls: type[Envelope], key: str, value: object) -> None:
    data = wire(cls)
    data[key] = value
    assert error_of(raw(data), family_union(cls)).field == f"$.{key}"


def test_wrong_type_nested() -> None:
    data = wire(messages.PlanResult)
    data["tasks"][1]["deps"] = [7]
    assert error_of(raw(data), Result).field == "$.tasks[1].deps[0]"
    data = wire(messages.CodeRequest)
    data["feedback"][0]["kind"] = "praise"
    assert error_of(raw(data), WorkItem).field == "$.feedback[0].kind"


def family_union(cls: type[Envelope]) -> Any:
    return family_of(cls).union


# Ids become NATS subject tokens and KV keys: `.`, `*`, `>` and whitespace would let a message
# address someone else's subject.
BAD_IDS = [
    "a.b",
    "*",
    ">",
    "run.*",
    "a b",
    "tab\there",
    "-leading-dash",
    "_unrouted",
    "x" * 65,
    "run\n",  # Python's `$` matches before a final newline
    "\n",
]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("key", ["run_id", "task_id", "msg_id", "trace_id"])
def test_bad_envelope_id(key: str, bad: str) -> None:
    data = wire(messages.CodeRequest)
    data[key] = bad
    err = error_of(raw(data), WorkItem)
    assert err.field == f"$.{key}"
    assert "regex" in err.reason


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a\n"])
def test_bad_nested_ids(bad: str) -> None:
    data = wire(messages.CodeRequest)
    data["task"]["id"] = bad
    assert error_of(raw(data), WorkItem).field == "$.task.id"
    data = wire(messages.Approve)
    data["approval_id"] = bad
    assert error_of(raw(data), Control).field == "$.approval_id"
    data = wire(messages.RunStatus)
    data["runs"][0]["run_id"] = bad
    assert error_of(raw(data), messages.ControlReply).field == "$.runs[0].run_id"


@pytest.mark.parametrize("bad", ["review\n", "review.x\n", "review.X"])
def test_bad_reviewer_names(bad: str) -> None:
    data = wire(messages.ReviewRequest)
    data["reviewer"] = bad
    assert error_of(raw(data), WorkItem).field == "$.reviewer"


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("calls", -1),
        ("prompt_tokens", -1_000_000_000),
        ("completion_tokens", -5),
        ("cost_usd", -100.0),
    ],
)
def test_usage_is_never_negative(key: str, bad: float) -> None:
    """A result claiming negative spend would shrink its run's and dodge the budget."""
    data = wire(messages.CodeResult)
    data["usage"] = {key: bad}
    assert error_of(raw(data), messages.ResultMessage).field == f"$.usage.{key}"


def test_empty_ids_only_where_optional() -> None:
    data = wire(messages.CodeRequest)
    data["run_id"] = data["task_id"] = ""
    assert decode(raw(data), WorkItem).run_id == ""
    data["msg_id"] = ""
    assert error_of(raw(data), WorkItem).field == "$.msg_id"


@pytest.mark.parametrize("attempt", [-1, -1000, 1001])
def test_attempt_out_of_range(attempt: int) -> None:
    data = wire(messages.TestRequest)
    data["attempt"] = attempt
    assert error_of(raw(data), WorkItem).field == "$.attempt"


def test_negative_attempt_nested() -> None:
    data = wire(messages.CodeRequest)
    data["feedback"][0]["attempt"] = -1
    assert error_of(raw(data), WorkItem).field == "$.feedback[0].attempt"


def _padded(size: int) -> bytes:
    """A valid message padded with JSON whitespace to exactly `size` bytes."""
    data = encode(sample_for(messages.Progress))
    return data[:-1] + b" " * (size - len(data)) + b"}"


def test_oversized_payload() -> None:
    data = _padded(MAX_MESSAGE_BYTES + 1)
    assert len(data) == MAX_MESSAGE_BYTES + 1
    err = error_of(data, messages.RunEvent)
    assert err.field in WHOLE_MESSAGE
    assert str(MAX_MESSAGE_BYTES) in err.reason


def test_payload_at_the_limit_is_accepted() -> None:
    data = _padded(MAX_MESSAGE_BYTES)
    assert decode(data, messages.RunEvent) == sample_for(messages.Progress)


def test_long_text_limit() -> None:
    data = wire(messages.PlanRequest)
    data["goal"] = "x" * 20_001
    err = error_of(raw(data), WorkItem)
    assert err.field == "$.goal"
    assert "20000" in err.reason


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_newer_schema_version(version: int) -> None:
    data = wire(messages.Deny)
    data["schema_version"] = version
    for type_ in (Control, messages.Deny):
        err = error_of(raw(data), type_)
        assert err.field == "$.schema_version"
        assert "upgrade" in err.reason


def test_current_schema_version_and_unknown_fields_are_accepted() -> None:
    """Forward compatibility: a newer coordinator may add optional fields to work items (and
    to the task and repository in them), which workers upgraded later still read."""
    data = wire(messages.CodeRequest)
    data["schema_version"] = SCHEMA_VERSION
    data["added_in_a_later_version"] = {"anything": [1, 2]}
    data["task"]["added_in_a_later_version"] = 1
    data["repo"]["added_in_a_later_version"] = 1
    assert decode(raw(data), WorkItem) == sample_for(messages.CodeRequest)


@pytest.mark.parametrize(
    ("cls", "path"),
    [
        (messages.SubmitRun, "aprove_merge"),
        (messages.SubmitRun, "plan[0].depends_on"),
        (messages.SubmitRun, "budget.max_token"),
        (messages.SubmitRun, "repo.pth"),
        (messages.CollectArtifacts, "dryrun"),
        (messages.Deny, "resaon"),
    ],
)
def test_a_control_request_with_a_field_codeyard_does_not_know_is_refused(
    cls: type[Envelope], path: str
) -> None:
    """A typo ignored would drop what a person asked for: the merge approval, a dependency,
    a limit, or "only tell" of a collection."""
    data = wire(cls)
    data["plan"] = [{"id": "a", "title": "t"}] if cls is messages.SubmitRun else None
    data = {key: value for key, value in data.items() if value is not None}
    *parents, name = path.replace("[0]", ".0").split(".")
    part: Any = data
    for parent in parents:
        part = part[int(parent)] if parent.isdigit() else part[parent]
    part[name] = True
    if parents:  # a part other messages carry: a plain decode reads past it, as workers do
        assert isinstance(decode(raw(data), Control), cls)
    with pytest.raises(MessageError) as refused:
        messages.decode_control(raw(data))
    assert refused.value.field == f"$.{path}"
    assert f"unknown field `{name}`" in refused.value.reason


def test_a_plan_a_person_wrote_names_only_the_fields_of_a_task() -> None:
    assert messages.decode_plan(b'[{"id": "a", "title": "t", "deps": []}]')[0].id == "a"
    with pytest.raises(MessageError) as refused:
        messages.decode_plan(
            b'[{"id": "a", "title": "t"}, {"id": "b", "title": "u", "after": ["a"]}]'
        )
    assert refused.value.field == "$[1].after"
