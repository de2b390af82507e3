"""The models an LLM fills through a forced tool call, and their conversion to wire types."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from codeyard.agents.outputs import (
    CodeOutput,
    PlanOutput,
    ReplaceText,
    ReviewOutput,
    TestOutput,
    WriteFile,
)
from codeyard.schemas import PlanResult, ReviewComment, ReviewResult, decode, encode

# What a model's tool call carries, as parsed JSON.
PLAN_CALL: dict[str, Any] = {
    "tasks": [
        {
            "id": "add-mul",
            "title": "Add multiplication",
            "description": "Add mul(a, b) to calc.ops.",
            "acceptance": ["mul(3, 4) == 12"],
            "files": ["calc/ops.py"],
            "deps": [],
            "effort": 2,
        },
        {
            "id": "export_mul",
            "title": "Export mul from calc",
            "description": "",
            "acceptance": ["from calc import mul works"],
            "files": ["calc/__init__.py"],
            "deps": ["add-mul"],
        },
    ]
}


@pytest.mark.parametrize("model", [PlanOutput, CodeOutput, TestOutput, ReviewOutput])
def test_every_output_schema_is_valid_json_schema_and_closed(model: type[Any]) -> None:
    schema = model.model_json_schema()

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["description"]  # the class docstring tells the model what it fills in


def test_plan_call_becomes_wire_task_specs() -> None:
    plan = PlanOutput.model_validate(PLAN_CALL)

    specs = plan.to_task_specs()

    assert [spec.id for spec in specs] == ["add-mul", "export_mul"]
    assert specs[1].deps == ["add-mul"]
    assert specs[0].acceptance == ["mul(3, 4) == 12"]
    assert (specs[0].effort, specs[1].effort) == (2, None)  # an estimate is optional
    # The specs pass the wire's own validation in a PlanResult.
    result = decode(encode(PlanResult(run_id="r1", tasks=specs)), PlanResult)
    assert result.tasks == specs


def test_a_plan_s_files_are_named_as_the_repository_names_them() -> None:
    """`./calc/ops.py` was not read for the coder (not in normal form), who then wrote the file
    without having seen it."""
    written = ["./calc/ops.py", "/README.md", "src//app.py", "a/./b/../c.py", "../outside.py"]
    call = PLAN_CALL | {"tasks": [PLAN_CALL["tasks"][0] | {"files": written}]}

    [spec] = PlanOutput.model_validate(call).to_task_specs()

    assert spec.files == ["calc/ops.py", "README.md", "src/app.py", "a/c.py", "../outside.py"]


def test_plan_schema_carries_the_id_pattern_for_constrained_decoding() -> None:
    schema = PlanOutput.model_json_schema()

    task = schema["$defs"]["PlannedTask"]
    assert task["properties"]["id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    assert task["properties"]["title"]["maxLength"] == 200
    with pytest.raises(ValidationError, match="id"):
        PlanOutput.model_validate({"tasks": [{**PLAN_CALL["tasks"][0], "id": "api.v2"}]})
    assert "effort" not in task["required"]
    with pytest.raises(ValidationError, match="effort"):
        PlanOutput.model_validate({"tasks": [{**PLAN_CALL["tasks"][0], "effort": 0}]})


def test_edits_are_told_apart_by_kind() -> None:
    output = CodeOutput.model_validate(
        {
            "summary": "Add mul.",
            "edits": [
                {"kind": "write", "path": "calc/mul.py", "content": "def mul(a, b): ...\n"},
                {"kind": "replace", "path": "calc/ops.py", "search": "a + b", "replace": "b + a"},
            ],
        }
    )

    assert output.edits == [
        WriteFile(kind="write", path="calc/mul.py", content="def mul(a, b): ...\n"),
        ReplaceText(kind="replace", path="calc/ops.py", search="a + b", replace="b + a"),
    ]
    items = CodeOutput.model_json_schema()["properties"]["edits"]["items"]
    assert items["discriminator"]["propertyName"] == "kind"


@pytest.mark.parametrize(
    "edit",
    [
        {"kind": "delete", "path": "calc/ops.py"},  # no such kind
        {"kind": "write", "path": "calc/ops.py"},  # no content
        {"kind": "replace", "path": "calc/ops.py", "search": "", "replace": "x"},  # empty search
        {"kind": "write", "path": "", "content": ""},  # no path
        {"kind": "write", "path": "a.py", "content": "", "mode": "0755"},  # invented field
    ],
)
def test_malformed_edits_fail_validation(edit: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        CodeOutput.model_validate({"summary": "s", "edits": [edit]})


def test_a_coder_must_edit_something_but_a_tester_may_add_nothing() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        CodeOutput.model_validate({"summary": "nothing to do", "edits": []})

    tests = TestOutput.model_validate({"rationale": "test_ops covers mul already", "edits": []})

    assert tests.edits == []


def test_review_call_becomes_wire_comments() -> None:
    review = ReviewOutput.model_validate(
        {
            "comments": [
                {"text": "mul ignores b", "path": "calc/ops.py", "line": 9},
                {"text": "No test for mul(0, x)"},
            ],
            "approved": False,
        }
    )

    comments = review.to_review_comments()

    assert comments == [
        ReviewComment(text="mul ignores b", path="calc/ops.py", line=9),
        ReviewComment(text="No test for mul(0, x)", path="", line=0),
    ]
    wire = ReviewResult(run_id="r1", task_id="add-mul", approved=False, comments=comments)
    assert decode(encode(wire), ReviewResult).comments == comments


def test_requesting_changes_needs_a_comment() -> None:
    with pytest.raises(ValidationError, match="needs at least one comment"):
        ReviewOutput.model_validate({"comments": [], "approved": False})

    assert ReviewOutput.model_validate({"comments": [], "approved": True}).approved


def test_the_reviewer_states_problems_before_the_verdict() -> None:
    # Property order is generation order for most models: reasons first, then the decision.
    assert list(ReviewOutput.model_json_schema()["properties"]) == ["comments", "approved"]


@pytest.mark.parametrize(
    ("model", "arguments"),
    [
        (PlanOutput, {"tasks": [{}] * 400_000}),
        (PlanOutput, {"tasks": [PLAN_CALL["tasks"][0] | {"deps": ["a"] * 400_000}]}),
        (ReviewOutput, {"comments": [{}] * 400_000, "approved": False}),
    ],
    ids=["tasks", "deps", "comments"],
)
def test_an_answer_of_endless_items_is_refused_once_not_item_by_item(
    model: type[Any], arguments: dict[str, Any]
) -> None:
    """Unbounded, 400,000 empty tasks were 800,000 problems to validate and describe, on the
    worker's event loop; bounded, one: the list is too long."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate(arguments)
    assert refused.value.error_count() == 1
    assert refused.value.errors()[0]["type"] == "too_long"
