"""The reviewer: the task, the diff and the test results in, approval or concrete changes out."""

from __future__ import annotations

from codeyard.agents.asking import answered_by, ask_model
from codeyard.agents.outputs import ReviewOutput
from codeyard.agents.prompt_context import describe_task, fenced
from codeyard.agents.prompt_templates import render_prompt
from codeyard.bus.worker import GiveUp
from codeyard.llm import LLMClient
from codeyard.schemas import Result, ReviewRequest, ReviewResult, WorkItem


class Reviewer:
    def __init__(self, llm: LLMClient) -> None:
        self.llm = llm

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, ReviewRequest):
            raise GiveUp(f"the reviewer does not handle {type(item).__name__}")
        messages = render_prompt(
            "reviewer",
            task=describe_task(item.task),
            patch=fenced(item.patch.text, "diff"),
            tests=fenced(item.tests.text, "diff") if item.tests else "(none)",
            test_output=fenced(item.test_output or "(no output)"),
        )
        completion = await ask_model(
            self.llm,
            "review",
            messages,
            ReviewOutput,
            tool_name="submit_review",
            tool_description="Approve the change, or request changes with concrete comments.",
        )
        return ReviewResult(
            reviewer=item.reviewer,
            approved=completion.value.approved,
            comments=completion.value.to_review_comments(),
            usage=completion.usage,
            model=answered_by(completion),
        )
