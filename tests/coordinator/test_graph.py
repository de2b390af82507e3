"""TaskGraph: what a valid plan is, and the orders and priorities derived from it."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codeyard.coordinator import InvalidPlan, TaskGraph
from codeyard.coordinator.graph import MAX_TASK_BYTES
from codeyard.schemas.model import TaskSpec
from tests.coordinator.plans import dags, spec


def test_orders_and_relations_of_a_small_plan() -> None:
    #   api -> models -> schema
    #   docs -> api
    #   cli (alone)
    graph = TaskGraph(
        [
            spec("api", "models"),
            spec("docs", "api"),
            spec("models", "schema"),
            spec("schema"),
            spec("cli"),
        ]
    )

    assert list(graph) == ["api", "docs", "models", "schema", "cli"]  # plan order
    assert graph.topological_order() == ("schema", "cli", "models", "api", "docs")
    assert graph.roots() == ("schema", "cli")
    assert graph.deps("api") == ("models",)
    assert graph.dependents("models") == ("api",)
    assert graph.descendants("schema") == {"models", "api", "docs"}
    assert graph.critical_path("schema") == 4
    assert graph.critical_path("cli") == 1
    assert graph.critical_path_length() == 4
    assert len(graph) == 5
    assert "api" in graph
    assert "nope" not in graph


def test_weights_change_the_critical_path() -> None:
    graph = TaskGraph([spec("a"), spec("b", "a"), spec("c")], weights={"a": 2.5, "c": 10})
    assert graph.critical_path("a") == 3.5
    assert graph.critical_path("c") == 10
    assert graph.critical_path_length() == 10


def test_a_repeated_dependency_counts_once() -> None:
    graph = TaskGraph([spec("a"), spec("b", "a", "a")])
    assert graph.deps("b") == ("a",)
    assert graph.dependents("a") == ("b",)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "invalid plan: the plan has no tasks"),
        ([spec("a"), spec("a")], "invalid plan: duplicate task id 'a'"),
        ([spec("a", "a")], "invalid plan: task 'a' depends on itself"),
        ([spec("a", "ghost")], "invalid plan: task 'a' depends on unknown task 'ghost'"),
        (
            [spec("a", "x"), spec("b", "b")],
            "invalid plan: task 'a' depends on unknown task 'x'; task 'b' depends on itself",
        ),
        (
            [spec("a", "c"), spec("b", "a"), spec("c", "b")],
            "invalid plan: dependency cycle a -> c -> b -> a (each depends on the next)",
        ),
    ],
)
def test_invalid_plans_are_refused_with_a_clear_message(
    specs: list[TaskSpec], message: str
) -> None:
    with pytest.raises(InvalidPlan) as raised:
        TaskGraph(specs)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_a_cycle_behind_other_tasks_is_named_without_them() -> None:
    # entry waits for the loop x -> y -> x but is not part of it
    with pytest.raises(InvalidPlan, match=r"dependency cycle x -> y -> x "):
        TaskGraph([spec("entry", "x"), spec("x", "y"), spec("y", "x"), spec("free")])


def test_bad_weights_are_refused() -> None:
    with pytest.raises(InvalidPlan, match="weight given for unknown task 'z'"):
        TaskGraph([spec("a")], weights={"z": 1})
    with pytest.raises(InvalidPlan, match="task 'a' has negative weight -1"):
        TaskGraph([spec("a")], weights={"a": -1})


@given(dags())
def test_topological_order_puts_every_task_after_its_deps(specs: list[TaskSpec]) -> None:
    graph = TaskGraph(specs)
    order = graph.topological_order()
    position = {task_id: i for i, task_id in enumerate(order)}
    assert sorted(order) == sorted(s.id for s in specs)
    for s in specs:
        assert all(position[dep] < position[s.id] for dep in s.deps)


@given(dags())
def test_critical_path_is_the_longest_chain_through_dependents(specs: list[TaskSpec]) -> None:
    graph = TaskGraph(specs)
    for task_id in graph:
        below = [graph.critical_path(d) for d in graph.dependents(task_id)]
        assert graph.critical_path(task_id) == 1 + max(below, default=0)
        assert graph.critical_path(task_id) <= len(graph.descendants(task_id)) + 1


@given(dags(), st.randoms(use_true_random=False))
def test_a_cycle_error_names_a_real_cycle(specs: list[TaskSpec], rng: random.Random) -> None:
    # close a loop: make some task depend on one of its descendants (or on itself's dependent)
    graph = TaskGraph(specs)
    candidates = [(t, d) for t in graph for d in graph.descendants(t)]
    if not candidates:
        return
    ancestor, descendant = rng.choice(candidates)
    broken = [s if s.id != ancestor else spec(s.id, *s.deps, descendant) for s in specs]
    with pytest.raises(InvalidPlan) as raised:
        TaskGraph(broken)
    problem = raised.value.problems[0]
    assert problem.startswith("dependency cycle ")
    names = problem.removeprefix("dependency cycle ").split(" (")[0].split(" -> ")
    assert names[0] == names[-1]
    assert len(set(names)) == len(names) - 1
    deps = {s.id: set(s.deps) for s in broken}
    for task_id, dep in itertools.pairwise(names):
        assert dep in deps[task_id], f"{task_id} does not depend on {dep}"


def test_ten_thousand_tasks_deep_and_wide() -> None:
    count = 10_000
    chain = TaskGraph([spec("n0")] + [spec(f"n{i}", f"n{i - 1}") for i in range(1, count)])
    assert chain.critical_path("n0") == count
    assert chain.topological_order()[-1] == f"n{count - 1}"
    assert len(chain.descendants("n0")) == count - 1

    rng = random.Random(7)
    wide = [
        spec(f"w{i}", *{f"w{rng.randrange(i)}" for _ in range(3)} if i else ())
        for i in range(count)
    ]
    assert len(TaskGraph(wide).topological_order()) == count

    loop = [spec(f"c{i}", f"c{(i + 1) % count}") for i in range(count)]
    with pytest.raises(InvalidPlan) as raised:
        TaskGraph(loop)
    assert raised.value.problems[0].count(" -> ") == count


def test_a_task_over_the_size_limit_is_refused_unless_accepted_before() -> None:
    at_limit = TaskSpec(id="a", title="a", description="x" * (MAX_TASK_BYTES - 100))
    over = TaskSpec(id="b", title="b", acceptance=["x" * 20_000] * 4)
    TaskGraph([at_limit])

    with pytest.raises(InvalidPlan) as refused:
        TaskGraph([at_limit, over])

    assert refused.value.problems == (f"task 'b' is 80049 bytes as JSON; at most {MAX_TASK_BYTES}",)
    assert len(TaskGraph([at_limit, over], limit_size=False)) == 2  # a stored run still loads
