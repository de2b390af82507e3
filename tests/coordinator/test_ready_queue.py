"""ReadyQueue: which ready task starts first."""

from __future__ import annotations

from codeyard.coordinator import ReadyQueue, TaskGraph
from tests.coordinator.plans import spec


def test_longest_chain_then_most_dependents_then_plan_order() -> None:
    graph = TaskGraph(
        [
            spec("lone"),  # chain 1
            spec("fan"),  # chain 2, three dependents
            spec("deep"),  # chain 3
            spec("mid", "deep"),
            spec("end", "mid"),
            spec("f1", "fan"),
            spec("f2", "fan"),
            spec("f3", "fan"),
            spec("pair"),  # chain 2, one dependent
            spec("after", "pair"),
            spec("lone2"),  # chain 1, after lone in the plan
        ]
    )
    queue = ReadyQueue(graph)
    for task_id in ("lone2", "pair", "lone", "fan", "deep"):
        queue.push(task_id)
    queue.push("fan")  # queued once only
    assert len(queue) == 5
    assert "fan" in queue
    assert queue.take(10, lambda _: True) == ["deep", "fan", "pair", "lone", "lone2"]
    assert len(queue) == 0


def test_take_stops_at_count_and_drops_tasks_no_longer_ready() -> None:
    graph = TaskGraph([spec("a"), spec("b"), spec("c")])
    queue = ReadyQueue(graph)
    for task_id in graph:
        queue.push(task_id)
    assert queue.take(1, lambda t: t != "a") == ["b"]  # a was parked meanwhile: dropped
    assert "a" not in queue
    assert queue.take(5, lambda _: True) == ["c"]
