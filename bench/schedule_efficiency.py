"""Schedule efficiency of the coordinator's engine: makespan against a lower bound.

    python -m bench.schedule_efficiency [--tasks 200] [--dags 100] [--coders 2 4 8 16 32]
        [--estimate-noise 0.5 1.0] [--worst 0]

A discrete-event simulation over the pure `RunEngine` (no I/O, a simulated clock): the engine
decides which ready task starts next (its rule: longest remaining critical path first, in tasks
or weighted by the plan's effort estimates) and how many run at once (capacity = the number of
coders). Model: each task's coding takes a latency drawn from a lognormal distribution (median
1, sigma `--sigma`); testing, review and the merge take no time, so a task holds a coder
exactly while it is coded. Every result passes.

For each random DAG (`codeyard.testing.dags.random_plan`) and each coder count N:

    efficiency = makespan / max(critical path, total work / N)

where the critical path is weighted by the latencies; 1.00 is optimal, and no schedule can do
better than the bound. Figures are medians (and the 90th percentile) over the DAGs, for:

- FIFO: the baseline, the same engine starting ready tasks in the order they became ready;
- engine, no estimates: the plan as written today, the critical path counted in tasks;
- engine, estimates noise S: every task's `TaskSpec.effort` is its true latency times a
  lognormal error (median 1, sigma S), drawn independently of the latency; the engine sees only
  that estimate, as it would see a planner's guess;
- oracle: `effort` is the true latency. NOT achievable online (nobody knows latencies before
  the work is done); it shows what the priority rule could reach with perfect knowledge.

"FIFO / makespan" is the median ratio of FIFO's makespan to the row's on the same DAG.
`--worst K` prints the K DAGs where the engine without estimates does worst, with the true
critical chain as (latency, remaining path in tasks) pairs: what the engine could not see.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

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
MAX_EFFORT = 10_000.0  # the wire bound of TaskSpec.effort


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


def with_estimates(
    specs: Sequence[TaskSpec], latency: dict[str, float], errors: dict[str, float], noise: float
) -> list[TaskSpec]:
    """The plan with `effort` = latency * exp(noise * error): a lognormal estimate, median the
    true latency (noise 0 gives the true latency itself, the oracle)."""
    return [
        msgspec.structs.replace(
            spec, effort=min(MAX_EFFORT, latency[spec.id] * math.exp(noise * errors[spec.id]))
        )
        for spec in specs
    ]


def estimate_errors(specs: Sequence[TaskSpec], seed: int) -> dict[str, float]:
    """Standard normal draws per task, shared by every noise level (so the rows differ only in
    the noise), from a stream of their own (so they say nothing about the latencies)."""
    rng = random.Random(f"estimate-{seed}")
    return {spec.id: rng.gauss(0.0, 1.0) for spec in sorted(specs, key=lambda s: s.id)}


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
    parser.add_argument(
        "--estimate-noise",
        type=float,
        nargs="*",
        default=[0.5, 1.0],
        help="lognormal sigma of the effort estimates' error, one row each",
    )
    parser.add_argument("--worst", type=int, default=0, help="print the K worst DAGs")
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
        f"{'coders':>6} {'work/N : CP':>12}  {'policy':<38} {'p50':>6} {'p90':>6} "
        f"{'FIFO / makespan':>16}"
    )
    policies = [
        "FIFO (baseline)",
        "engine, no estimates",
        *(f"engine, estimates noise {noise:g}" for noise in args.estimate_noise),
        "oracle: true latencies (not online)",
    ]
    plans = []
    for seed in range(args.dags):
        specs = random_plan(args.tasks, seed=seed, max_deps=args.max_deps, window=args.window)
        latency = latencies_for(specs, seed, args.sigma)
        errors = estimate_errors(specs, seed)
        estimated = [with_estimates(specs, latency, errors, noise) for noise in args.estimate_noise]
        oracle = with_estimates(specs, latency, errors, 0.0)
        plans.append((seed, specs, latency, estimated, oracle))
    for coders in args.coders:
        efficiency: dict[str, list[float]] = {name: [] for name in policies}
        versus_fifo: dict[str, list[float]] = {name: [] for name in policies}
        balance = []
        worst = []
        for seed, specs, latency, estimated, oracle in plans:
            outcomes = [
                simulate(specs, latency, coders, fifo=True),
                simulate(specs, latency, coders),
                *(simulate(plan, latency, coders) for plan in estimated),
                simulate(oracle, latency, coders),
            ]
            for name, outcome in zip(policies, outcomes, strict=True):
                efficiency[name].append(outcome.efficiency)
                versus_fifo[name].append(outcomes[0].makespan / outcome.makespan)
            balance.append(outcomes[1].total_work / coders / outcomes[1].critical_path)
            worst.append((outcomes[1].efficiency, outcomes[-1].efficiency, seed))
        for name in policies:
            print(
                f"{coders:6} {statistics.median(balance):12.2f}  {name:<38} "
                f"{statistics.median(efficiency[name]):6.3f} "
                f"{quantile(efficiency[name], 0.9):6.3f} "
                f"{statistics.median(versus_fifo[name]):16.3f}"
            )
        for engine_eff, oracle_eff, seed in sorted(worst, reverse=True)[: args.worst]:
            _, specs, latency, _, _ = plans[seed]
            print(
                f"    worst: seed {seed}, efficiency {engine_eff:.3f} (oracle {oracle_eff:.3f}); "
                f"true critical chain: {describe_chain(specs, latency)}"
            )


def describe_chain(specs: Sequence[TaskSpec], latency: dict[str, float]) -> str:
    """The chain that makes the weighted critical path, as (latency, remaining path in tasks)."""
    weighted = TaskGraph(specs, weights=latency)
    counted = TaskGraph(specs)
    task_id = max(weighted, key=weighted.critical_path)
    links = []
    while True:
        links.append(f"({latency[task_id]:.1f}, {counted.critical_path(task_id):.0f})")
        dependents = weighted.dependents(task_id)
        if not dependents:
            return " ".join(links)
        task_id = max(dependents, key=weighted.critical_path)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
