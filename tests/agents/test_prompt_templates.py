"""The role prompts: packaged markdown templates rendered into chat messages, strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.plan_check import plan_feedback
from codeyard.agents.prompt_context import (
    bullet_list,
    describe_feedback,
    describe_task,
    fenced,
    quote_files,
)
from codeyard.agents.prompt_templates import (
    SECTIONS,
    TEMPLATE_NAMES,
    PromptError,
    load_template,
    parse_template,
    render_prompt,
)
from codeyard.agents.repo_summary import summarize_repo
from codeyard.schemas import Feedback, FeedbackKind, TaskSpec
from tests.agents.plans import plan

# The contract with the role workers: the values each template asks for.
PLACEHOLDERS = {
    "planner": {"goal", "constraints", "repo_summary", "feedback"},
    "coder": {"goal", "task", "files", "feedback"},
    "tester": {"task", "patch", "test_command", "files"},
    "reviewer": {"task", "patch", "tests", "test_output"},
}

TASK = TaskSpec(
    id="add-mul",
    title="Add multiplication",
    description="Add `mul(a, b)` to calc.ops and export it from calc.",
    acceptance=["mul(3, 4) == 12", "calc.mul is calc.ops.mul"],
    files=["calc/ops.py", "calc/__init__.py"],
)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_role_has_a_template_with_the_five_sections(name: str) -> None:
    template = load_template(name)

    assert template.placeholders == PLACEHOLDERS[name]
    values = {placeholder: f"<{placeholder}>" for placeholder in template.placeholders}
    system, user = template.render(values)
    assert system["role"] == "system"
    assert user["role"] == "user"
    # The instructions carry the first four sections, the context the values.
    assert [line for line in system["content"].splitlines() if line.startswith("# ")] == [
        f"# {section}" for section in SECTIONS[:-1]
    ]
    assert "# Context" not in user["content"]
    for placeholder in template.placeholders:
        assert f"<{placeholder}>" in user["content"]
    assert "$" not in system["content"] + user["content"]


def test_planner_prompt_from_a_real_repository(sample_repo: Path) -> None:
    messages = render_prompt(
        "planner",
        goal="Add multiplication and division",
        constraints=bullet_list(["no new dependencies"]),
        repo_summary=summarize_repo(sample_repo).render(),
        feedback=bullet_list([]),
    )

    assert [message["role"] for message in messages] == ["system", "user"]
    context = messages[1]["content"]
    assert context.startswith("## Goal\n\nAdd multiplication and division\n")
    assert "- no new dependencies" in context
    assert "calc/ops.py" in context
    assert "python -m pytest" in context
    assert "## Feedback on earlier plans\n\n(none)" in context


def test_planner_is_reasked_with_the_plan_check_feedback() -> None:
    cyclic = plan(("a", ["b"]), ("b", ["a"]))

    messages = render_prompt(
        "planner",
        goal="g",
        constraints=bullet_list([]),
        repo_summary="(empty repository)",
        feedback=plan_feedback(cyclic),
    )

    assert "dependency cycle a -> b -> a" in messages[1]["content"]


def test_coder_prompt_with_files_and_feedback() -> None:
    feedback = [
        Feedback(attempt=1, kind=FeedbackKind.TEST_FAILURE, text="E   assert 7 == 12"),
        Feedback(attempt=2, kind=FeedbackKind.REVIEW, text="calc/ops.py:9: mul ignores b"),
    ]

    _, user = render_prompt(
        "coder",
        goal="Add multiplication",
        task=describe_task(TASK),
        files=quote_files({"calc/ops.py": "def add(a, b):\n    return a + b\n"}),
        feedback=describe_feedback(feedback),
    )

    content = user["content"]
    assert "id: add-mul\ntitle: Add multiplication\n" in content
    assert "Acceptance criteria:\n- mul(3, 4) == 12\n- calc.mul is calc.ops.mul" in content
    assert "### calc/ops.py\n\n```\ndef add(a, b):\n    return a + b\n```" in content
    assert "### Attempt 1: test failure" in content
    assert "### Attempt 2: review" in content


def test_values_are_inserted_verbatim_never_expanded() -> None:
    # File content is data: a `$goal` or `${task}` in it is not a placeholder.
    hostile = "price = '$goal' + '${task}' + '$$'"

    _, user = render_prompt(
        "reviewer",
        task=describe_task(TASK),
        patch=fenced(hostile, "diff"),
        tests="(none)",
        test_output="ok",
    )

    assert hostile in user["content"]


def test_a_missing_placeholder_is_an_error_naming_it() -> None:
    with pytest.raises(PromptError) as caught:
        render_prompt("reviewer", task="t", patch="p", tests="")

    assert str(caught.value) == "the reviewer template: no value for $test_output"


def test_an_unknown_value_is_an_error_too() -> None:
    # Usually a misspelt placeholder, which would otherwise leave the real one unset.
    with pytest.raises(PromptError) as caught:
        render_prompt("reviewer", task="t", patch="p", tests="", test_output="", tests_output="")

    assert str(caught.value) == "the reviewer template: no placeholder for 'tests_output'"


def test_an_unknown_template_is_an_error() -> None:
    with pytest.raises(PromptError, match=r"no prompt template '\.\./secrets'"):
        load_template("../secrets")


def test_a_template_must_have_the_sections_in_order() -> None:
    shuffled = "# Role\n\nr\n\n# Goal\n\ng\n\n# Operating constraints\n\n# Behaviour\n\n# Context\n"

    with pytest.raises(PromptError, match="has sections"):
        parse_template("custom", shuffled)


def test_a_stray_dollar_in_a_template_is_found_when_loading() -> None:
    text = "# Goal\n\nCosts $5.\n\n# Operating constraints\n\n# Role\n\n# Behaviour\n\n# Context\n"

    with pytest.raises(PromptError, match=r"write `\$\$`"):
        parse_template("custom", text)


def test_a_fence_outlasts_the_backticks_inside_it() -> None:
    readme = "Usage:\n```sh\nmake\n```\n"

    quoted = fenced(readme)

    assert quoted.startswith("````\n")
    assert quoted.endswith("\n````")
