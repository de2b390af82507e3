"""Whether a planner's plan can run, and if not, the text the planner is asked again with.

The graph rules (at least one task, unique ids, known deps, no cycles) are the coordinator's
`TaskGraph`, so a plan accepted here is never refused when it reaches the coordinator. On top,
every task must pass the wire limits of `TaskSpec`, or its `PlanResult` would not decode, and
the plan must fit in one message.
"""

from __future__ import annotations

import re

import msgspec

from codeyard.agents.outputs import PlanOutput
from codeyard.coordinator.graph import InvalidPlan, TaskGraph
from codeyard.schemas import MAX_MESSAGE_BYTES, TaskSpec
from codeyard.schemas.envelope import ID_PATTERN

_ID = re.compile(ID_PATTERN)
# The tasks of a `PlanResult`, which travels in one message: room left for its envelope and
# usage. Over it, the plan was accepted here and then failed as a result too big to send.
MAX_PLAN_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


def plan_problems(plan: PlanOutput) -> list[str]:
    """Every defect of the plan, each one sentence; empty when the plan can run."""
    problems: list[str] = []
    specs = plan.to_task_specs()
    for position, spec in enumerate(specs, start=1):
        if not _ID.fullmatch(spec.id):
            problems.append(
                f"task {position} has the id {spec.id!r}; an id is 1 to 64 letters, digits, "
                "'-' or '_', starting with a letter or digit"
            )
            continue  # the wire check below would only report the id again
        try:
            msgspec.convert(msgspec.to_builtins(spec), TaskSpec)
        except msgspec.ValidationError as exc:
            problems.append(f"task {spec.id!r}: {exc}")
    try:
        TaskGraph(specs)
    except InvalidPlan as exc:
        problems.extend(exc.problems)
    if not problems and (size := len(msgspec.json.encode(specs))) > MAX_PLAN_BYTES:
        problems.append(
            f"the plan is {size:,} bytes as sent, more than the {MAX_PLAN_BYTES:,} a plan may "
            "be: fewer tasks, or shorter descriptions and acceptance criteria"
        )
    return problems


def plan_feedback(plan: PlanOutput) -> str:
    """The text to ask the planner again with, or "" when the plan can run."""
    problems = plan_problems(plan)
    if not problems:
        return ""
    listed = "\n".join(f"- {problem}" for problem in problems)
    return (
        f"The plan cannot be used:\n{listed}\n"
        "Fix every problem listed and return the complete plan again."
    )
