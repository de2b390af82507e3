"""Random task graphs for tests and benchmarks."""

from __future__ import annotations

import random

from codeyard.schemas.model import TaskSpec


def random_plan(
    tasks: int, *, seed: int = 0, max_deps: int = 3, window: int = 50
) -> list[TaskSpec]:
    """An acyclic plan: each task depends on up to `max_deps` of the `window` tasks made before
    it (a window keeps graphs wide, as real plans are), listed in shuffled order."""
    rng = random.Random(seed)
    ids = [f"t{i}" for i in range(tasks)]
    rng.shuffle(ids)
    specs = []
    for i, task_id in enumerate(ids):
        earlier = ids[max(0, i - window) : i]
        deps = rng.sample(earlier, min(len(earlier), rng.randint(0, max_deps)))
        specs.append(TaskSpec(id=task_id, title=f"task {task_id}", deps=sorted(deps)))
    rng.shuffle(specs)
    return specs
