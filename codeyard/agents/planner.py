"""The planner: a goal and a repository summary in, a validated task graph out."""

from __future__ import annotations

import asyncio

from codeyard.agents.asking import answered_by, ask_model, told_again
from codeyard.agents.outputs import PlanOutput
from codeyard.agents.plan_check import plan_feedback
from codeyard.agents.prompt_context import bullet_list, describe_feedback
from codeyard.agents.prompt_templates import render_prompt
from codeyard.agents.repo_summary import summarize_repo
from codeyard.agents.working_copy import working_copy
from codeyard.bus.worker import GiveUp
from codeyard.llm import LLMClient
from codeyard.schemas import PlanRequest, PlanResult, Result, Usage, WorkItem

PLAN_ANSWERS = 3


class Planner:
    def __init__(self, llm: LLMClient) -> None:
        self.llm = llm

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, PlanRequest):
            raise GiveUp(f"the planner does not handle {type(item).__name__}")
        summary = None
        if item.repo.snapshot or item.repo.path:
            async with working_copy(item.repo) as root:
                summary = await asyncio.to_thread(
                    summarize_repo, root, test_command=item.test_command
                )
        messages = render_prompt(
            "planner",
            goal=item.goal,
            constraints=bullet_list(item.constraints),
            repo_summary=summary.render() if summary else "(no repository)",
            feedback=describe_feedback(item.feedback),
        )
        usage = Usage()
        model = ""  # the model of the last answer
        problem = ""
        for _ in range(PLAN_ANSWERS):
            completion = await ask_model(
                self.llm,
                "planner",
                messages,
                PlanOutput,
                tool_name="submit_plan",
                tool_description="Submit the plan: the tasks, their acceptance criteria and deps.",
                spent=usage,
                model=model,
            )
            usage = usage + completion.usage
            model = answered_by(completion)
            problem = plan_feedback(completion.value)
            if not problem:
                return PlanResult(
                    tasks=completion.value.to_task_specs(),
                    usage=usage,
                    model=model,
                )
            messages = told_again(messages, completion.value, f"The plan is invalid: {problem}")
        raise GiveUp(
            f"no valid plan in {PLAN_ANSWERS} answers; the last: {problem}",
            usage=usage,
            model=model,
        )
