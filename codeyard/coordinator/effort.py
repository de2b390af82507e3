"""Critical-path weights from the planner's effort estimates (`TaskSpec.effort`).

The engine starts the ready task with the longest remaining critical path first. Counted in
tasks, that path misses the one long task behind a chain of short ones; weighted by estimates,
even rough ones, it finds it (see bench.schedule_efficiency).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from codeyard.schemas.model import TaskSpec


def effort_weights(specs: Iterable[TaskSpec]) -> dict[str, float]:
    """Task id -> weight: its estimate, or, for a task the planner did not estimate, the median
    estimate of the plan (assumed a typical task: 0 would hide it, the largest would rush it).

    Without any estimate the result is empty, so every task weighs 1 and the critical path is
    counted in tasks, as for plans written before estimates existed.
    """
    specs = list(specs)
    estimates = [spec.effort for spec in specs if spec.effort is not None]
    if not estimates:
        return {}
    typical = statistics.median(estimates)
    return {spec.id: typical if spec.effort is None else spec.effort for spec in specs}
