"""Plans for coordinator tests: a short way to write task specs, and random DAGs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from hypothesis import strategies as st

from codeyard.coordinator import Dispatch, Effect, PlanProposed, RunEngine
from codeyard.schemas.model import Budget, Run, TaskSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def spec(task_id: str, *deps: str, reviewers: Sequence[str] = ()) -> TaskSpec:
    return TaskSpec(id=task_id, title=f"task {task_id}", deps=list(deps), reviewers=list(reviewers))


def new_run(*, budget: Budget | None = None, approve_plan: bool = False) -> Run:
    return Run(
        run_id="run1",
        goal="test the coordinator",
        budget=budget or Budget(),
        approve_plan=approve_plan,
    )


def started(
    specs: Sequence[TaskSpec], *, capacity: int = 4, budget: Budget | None = None
) -> tuple[RunEngine, list[Effect]]:
    """An engine whose run just received `specs` as its plan, and the effects of that."""
    engine = RunEngine(new_run(budget=budget), capacity=capacity)
    return engine, engine.handle(PlanProposed(tuple(specs)), T0)


def dispatched(effects: Sequence[Effect]) -> list[tuple[str, str, int]]:
    """(role, task_id, attempt) of each Dispatch, in order."""
    return [(e.role, e.task_id, e.attempt) for e in effects if isinstance(e, Dispatch)]


@st.composite
def dags(draw: st.DrawFn, max_tasks: int = 25, max_deps: int = 4) -> list[TaskSpec]:
    """A random acyclic plan: each task depends only on tasks created before it; then the ids
    and the order of the plan are shuffled, so neither gives the order away. Some tasks need
    two reviewers instead of the default one."""
    count = draw(st.integers(1, max_tasks))
    ids = draw(st.permutations([f"t{i}" for i in range(count)]))
    specs = []
    for i in range(count):
        earlier = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=max_deps)) if i else []
        reviewers = draw(st.sampled_from([(), ("review", "review.security")]))
        specs.append(spec(ids[i], *(ids[j] for j in earlier), reviewers=reviewers))
    return draw(st.permutations(specs))
