"""Schedule efficiency of the coordinator's engine: makespan against a lower bound.

    python -m bench.schedule_efficiency [--tasks 200] [--dags 100] [--coders 2 4 8 16 32]

A discrete-event simulation over the pure `RunEngine` (no I/O, a simulated clock): the engine
decides which ready task starts next (its rule: longest remaining critical path first, counted
in tasks, since it does not know how long a task will take) and how many run at once (capacity
= the number of coders). Model: each task's coding takes a latency drawn from a lognormal
distribution (median 1, sigma `--sigma`); testing, review and the merge take no time, so a task
holds a coder exactly while it is coded. Every result passes.

For each random DAG (`codeyard.testing.dags.random_plan`) and each coder count N:

    efficiency = makespan / max(critical path, total work / N)

where the critical path is weighted by the latencies; 1.00 is optimal, and no schedule can do
better than the bound. Figures are medians (and the 90th percentile) over the DAGs. The
baseline, simulated the same way in the same invocation, is the same engine starting ready
tasks in the order they became ready (FIFO), so the ratio shows what the priority buys.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from codeyard.coordinator import (
    CapacityChanged,
    Coded,
    Dispatch,
    Event,
    Integrate,
    Integrated,
    Merge,
    Merged,
    PlanProposed,
    Reviewed,
    RunEngine,
    Tested,
)
from codeyard.coordinator.effects import CODER, TESTER
from codeyard.coordinator.graph import TaskGraph
from codeyard.schemas.model import Run, RunState, TaskSpec
from codeyard.testing.dags import random_plan

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FifoQueue:
    """The baseline policy: ready tasks start in the order they became ready. Duck-types
    `codeyard.coordinator.ready_queue.ReadyQueue` (push / take / len / in)."""

    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._queued

    def push(self, task_id: str) -> None:
        if task_id not in self._queued:
            self._queue.append(task_id)
            self._queued.add(task_id)

    def take(self, count: int, still_ready: Callable[[str], bool]) -> list[str]:
        taken: list[str] = []
        while len(taken) < count and self._queue:
            task_id = self._queue.popleft()
            self._queued.discard(task_id)
            if still_ready(task_id):
                taken.append(task_id)
        return taken


@dataclass(frozen=True)
class Outcome:
    makespan: float
    critical_path: float
    total_work: float
    coders: int

    @property
    def lower_bound(self) -> float:
        return max(self.critical_path, self.total_work / self.coders)

    @property
    def efficiency(self) -> float:
        return self.makespan / self.lower_bound


def latencies_for(specs: Sequence[TaskSpec], seed: int, sigma: float) -> dict[str, float]:
    rng = random.Random(seed)
    return {spec.id: rng.lognormvariate(0.0, sigma) for spec in sorted(specs, key=lambda s: s.id)}


def simulate(
    specs: Sequence[TaskSpec], latency: dict[str, float], coders: int, *, fifo: bool = False
) -> Outcome:
    """Run the plan through a `RunEngine` on a simulated clock; the makespan in latency units."""
    engine = RunEngine(Run(run_id="sim", goal="simulate"), capacity=0)
    engine.handle(PlanProposed(tuple(specs)), T0)  # capacity 0: ready, nothing started yet
    if fifo:
        # swap in the baseline policy, holding the tasks ready now in plan order (private
        # attribute: the engine has no policy hook, and this is a measurement, not a feature)
        queue = FifoQueue()
        for task_id in engine.graph:
            if engine.run.tasks[task_id].state.value == "ready":
                queue.push(task_id)
        engine._queue = queue  # type: ignore[assignment]
    now = 0.0
    running: list[tuple[float, int, str, int]] = []  # (finish time, seq, task, attempt)
    immediate: deque[Event] = deque([CapacityChanged(coders)])
    seq = 0
    done = False
    while not done:
        if not immediate:
            if not running:
                raise RuntimeError("simulation stalled: nothing running and nothing to do")
            now, _, task_id, attempt = heapq.heappop(running)
            immediate.append(Coded(task_id, attempt))
        event = immediate.popleft()
        for effect in engine.handle(event, T0 + timedelta(seconds=now)):
            match effect:
                case Dispatch(role=role, task_id=task_id, attempt=attempt):
                    if role == CODER:
                        heapq.heappush(running, (now + latency[task_id], seq, task_id, attempt))
                        seq += 1
                    elif role == TESTER:
                        immediate.append(Tested(task_id, attempt, passed=True))
                    else:
                        immediate.append(Reviewed(task_id, attempt, role, approved=True))
                case Merge(task_id=task_id, attempt=attempt):
                    immediate.append(Merged(task_id, attempt))
                case Integrate():
                    immediate.append(Integrated(ok=True))
                    done = True
                case _:
                    pass
    if engine.run.state is not RunState.INTEGRATING:
        raise RuntimeError(f"simulation ended with the run {engine.run.state}")
    weighted = TaskGraph(specs, weights=latency)
    return Outcome(now, weighted.critical_path_length(), sum(latency.values()), coders)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200, help="tasks per random DAG")
    parser.add_argument("--dags", type=int, default=100, help="random DAGs per coder count")
    parser.add_argument("--coders", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of latencies")
    parser.add_argument("--max-deps", type=int, default=3)
    parser.add_argument("--window", type=int, default=50, help="see random_plan")
    args = parser.parse_args()

    print(
        f"model: {args.dags} random DAGs of {args.tasks} tasks (max_deps {args.max_deps}, "
        f"window {args.window}); coding latency lognormal(median 1, sigma {args.sigma}); "
        "test/review/merge instantaneous"
    )
    print("efficiency = makespan / max(critical path, total work / coders); 1.00 is optimal")
    print(
        f"{'coders':>6} {'work/N : CP':>12} {'engine p50':>11} {'engine p90':>11} "
        f"{'FIFO p50':>9} {'FIFO p90':>9} {'FIFO/engine':>12}"
    )
    for coders in args.coders:
        engine_eff, fifo_eff, balance, ratio = [], [], [], []
        for seed in range(args.dags):
            specs = random_plan(args.tasks, seed=seed, max_deps=args.max_deps, window=args.window)
            latency = latencies_for(specs, seed, args.sigma)
            ours = simulate(specs, latency, coders)
            baseline = simulate(specs, latency, coders, fifo=True)
            engine_eff.append(ours.efficiency)
            fifo_eff.append(baseline.efficiency)
            balance.append(ours.total_work / coders / ours.critical_path)
            ratio.append(baseline.makespan / ours.makespan)
        print(
            f"{coders:6} {statistics.median(balance):12.2f} "
            f"{statistics.median(engine_eff):11.3f} {quantile(engine_eff, 0.9):11.3f} "
            f"{statistics.median(fifo_eff):9.3f} {quantile(fifo_eff, 0.9):9.3f} "
            f"{statistics.median(ratio):12.3f}"
        )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
