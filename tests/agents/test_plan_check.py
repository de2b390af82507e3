"""Checking the planner's plan, and the text it is asked again with when the plan is wrong."""

from __future__ import annotations

from codeyard.agents.outputs import PlannedTask, PlanOutput
from codeyard.agents.plan_check import plan_feedback, plan_problems
from codeyard.coordinator import TaskGraph
from tests.agents.plans import plan, planned


def test_a_valid_plan_has_no_feedback_and_the_coordinator_accepts_it() -> None:
    valid = plan(("models", []), ("api", ["models"]), ("docs", ["api", "models"]))

    assert plan_problems(valid) == []
    assert plan_feedback(valid) == ""
    graph = TaskGraph(valid.to_task_specs())
    assert graph.topological_order() == ("models", "api", "docs")


def test_a_cyclic_plan_is_reasked_naming_the_cycle() -> None:
    cyclic = plan(("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", []))

    assert plan_feedback(cyclic) == (
        "The plan cannot be used:\n"
        "- dependency cycle a -> c -> b -> a (each depends on the next)\n"
        "Fix every problem listed and return the complete plan again."
    )


def test_every_graph_problem_is_listed_at_once() -> None:
    broken = plan(("a", ["a"]), ("b", ["ghost"]), ("b", []))

    assert plan_problems(broken) == [
        "duplicate task id 'b'",
        "task 'a' depends on itself",
        "task 'b' depends on unknown task 'ghost'",
    ]


def test_an_empty_plan_is_refused() -> None:
    # The schema asks for at least one task; a plan built without validation is still checked.
    empty = PlanOutput.model_construct(tasks=[])

    assert plan_problems(empty) == ["the plan has no tasks"]


def test_ids_that_cannot_travel_on_the_bus_are_refused() -> None:
    # Ids become parts of NATS subjects: a `.` or `>` in one would address other subjects.
    dotted = PlannedTask.model_construct(**{**planned("x").model_dump(), "id": "api.v2"})
    wild = PlannedTask.model_construct(**{**planned("y").model_dump(), "id": ">"})
    bad = PlanOutput.model_construct(tasks=[planned("ok"), dotted, wild])

    problems = plan_problems(bad)

    assert problems == [
        "task 2 has the id 'api.v2'; an id is 1 to 64 letters, digits, '-' or '_', "
        "starting with a letter or digit",
        "task 3 has the id '>'; an id is 1 to 64 letters, digits, '-' or '_', "
        "starting with a letter or digit",
    ]


def test_text_over_the_wire_limits_is_refused() -> None:
    long_title = PlannedTask.model_construct(**{**planned("a").model_dump(), "title": "t" * 201})
    bad = PlanOutput.model_construct(tasks=[long_title])

    assert plan_problems(bad) == ["task 'a': Expected `str` of length <= 200 - at `$.title`"]


def test_a_plan_too_big_to_send_is_reasked_asking_for_less() -> None:
    """It passed, then failed as a `PlanResult` too big to send: a result, not a re-ask."""
    long = "x" * 19_000
    tasks = [
        PlannedTask(id=f"t{n}", title="t", description=long, acceptance=[], files=[], deps=[])
        for n in range(60)
    ]
    [problem] = plan_problems(PlanOutput(tasks=tasks))
    assert problem.startswith("the plan is 1,1")
    assert "fewer tasks, or shorter descriptions" in problem
    assert plan_problems(PlanOutput(tasks=tasks[:50])) == []
