"""Planner outputs for the tests, written the way an LLM's tool call arrives."""

from __future__ import annotations

from codeyard.agents.outputs import PlannedTask, PlanOutput


def planned(task_id: str, deps: list[str] | None = None) -> PlannedTask:
    return PlannedTask(
        id=task_id,
        title=f"Task {task_id}",
        description=f"Do {task_id}.",
        acceptance=[f"{task_id} works"],
        files=[f"src/{task_id}.py"],
        deps=deps or [],
    )


def plan(*tasks: tuple[str, list[str]]) -> PlanOutput:
    """A validated plan of (id, deps) pairs."""
    return PlanOutput(tasks=[planned(task_id, deps) for task_id, deps in tasks])
