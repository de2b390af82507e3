"""Effort estimates: how they weigh the critical path, and what the engine starts first."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from codeyard.coordinator import CapacityChanged, ReadyQueue, RunEngine, TaskGraph
from codeyard.coordinator.effort import effort_weights
from codeyard.schemas.model import TaskSpec
from tests.coordinator.plans import T0, dags, dispatched, spec, started

ESTIMATES = st.one_of(st.none(), st.floats(min_value=0.01, max_value=100))


def estimated(specs: list[TaskSpec], efforts: list[float | None]) -> list[TaskSpec]:
    """The plan with the i-th task's effort set to efforts[i] (tasks beyond the list: None)."""
    padded = [*efforts, *[None] * len(specs)]
    return [msgspec.structs.replace(s, effort=e) for s, e in zip(specs, padded, strict=False)]


def start_order(specs: list[TaskSpec]) -> list[str]:
    """Every task of the plan in the order the ready queue would start them."""
    graph = TaskGraph(specs, weights=effort_weights(specs))
    queue = ReadyQueue(graph)
    for task_id in graph:
        queue.push(task_id)
    return queue.take(len(graph), lambda _: True)


def test_the_median_stands_in_for_a_missing_estimate_exhaustively() -> None:
    # every way to estimate (or not) four tasks with efforts that make odd and even medians
    for efforts in itertools.product([None, 1.0, 2.0, 7.0], repeat=4):
        specs = [TaskSpec(id=f"t{i}", title="t", effort=e) for i, e in enumerate(efforts)]
        known = sorted(e for e in efforts if e is not None)
        weights = effort_weights(specs)
        if not known:
            assert weights == {}
            continue
        middle = len(known) // 2
        median = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
        assert weights == {f"t{i}": median if e is None else e for i, e in enumerate(efforts)}, (
            efforts
        )


@given(dags())
def test_a_plan_without_estimates_is_counted_in_tasks(specs: list[TaskSpec]) -> None:
    assert effort_weights(specs) == {}
    weighted = TaskGraph(specs, weights=effort_weights(specs))
    counted = TaskGraph(specs)
    assert all(weighted.critical_path(t) == counted.critical_path(t) for t in counted)


@given(dags(), st.lists(ESTIMATES, max_size=25))
def test_with_any_estimate_every_task_gets_a_positive_weight(
    specs: list[TaskSpec], efforts: list[float | None]
) -> None:
    specs = estimated(specs, efforts)
    weights = effort_weights(specs)
    if any(s.effort is not None for s in specs):
        assert set(weights) == {s.id for s in specs}
        assert all(weight > 0 for weight in weights.values())
        assert all(weights[s.id] == s.effort for s in specs if s.effort is not None)


@given(dags(), st.lists(ESTIMATES, max_size=25), st.sampled_from([2.0**-10, 0.5, 4.0, 2.0**20]))
def test_only_ratios_of_estimates_matter(
    specs: list[TaskSpec], efforts: list[float | None], scale: float
) -> None:
    # powers of two scale floats exactly, so no rounding can reorder near-ties
    scaled = [None if e is None else e * scale for e in efforts]
    assert start_order(estimated(specs, efforts)) == start_order(estimated(specs, scaled))


@given(dags(), st.floats(min_value=0.01, max_value=1000))
def test_equal_estimates_start_tasks_as_no_estimates_do(
    specs: list[TaskSpec], effort: float
) -> None:
    assert start_order(estimated(specs, [effort] * len(specs))) == start_order(specs)


def with_effort(task_id: str, effort: float, *deps: str) -> TaskSpec:
    return msgspec.structs.replace(spec(task_id, *deps), effort=effort)


def test_the_engine_starts_a_long_task_before_a_longer_chain_of_short_ones() -> None:
    chain = [spec("a"), spec("b", "a"), spec("c", "b")]
    _, effects = started([*chain, spec("long")], capacity=1)
    assert dispatched(effects) == [("coder", "a", 1)]  # counted in tasks: 3 beats 1

    sized = [with_effort("a", 1), with_effort("b", 1, "a"), with_effort("c", 1, "b")]
    engine, effects = started([*sized, with_effort("long", 8)], capacity=1)
    assert dispatched(effects) == [("coder", "long", 1)]  # weighed: 8 beats 3

    # a standby rebuilding the engine from the stored run weighs the same way
    idle, _ = started([*sized, with_effort("long", 8)], capacity=0)
    standby = RunEngine(msgspec.convert(msgspec.to_builtins(idle.run), type(idle.run)), capacity=0)
    assert dispatched(standby.handle(CapacityChanged(1), T0)) == [("coder", "long", 1)]
    assert engine.graph.critical_path("a") == 3
