"""Coordinator throughput and dispatch latency on no-op workers, with durability on.

    python -m bench.coordinator_throughput [--tasks 1000 [10000 ...]] [--runs 3] [--capacity 256]
                                           [--shape random|independent]

A real nats-server (file store) and the coordinator run as child processes; no-op workers for
coder, tester and review run in this process. Each run submits a random DAG (`--shape
independent`: tasks without dependencies, for comparison) and times it from submit to `done`.
Figures are medians over the runs; the baseline is plain nats-py core request/reply on the same
server, measured in the same invocation.

- throughput: tasks / (submit -> run done). Each task is 3 work items (code, test, review),
  3 results (those a worker finishes together travel as one `ResultBatch`), a merge and ~6
  state changes, journaled per run and step and reported on the events stream.
- dispatch latency: a work item's creation in the coordinator (`sent_at`) -> the worker's
  handler starting on it; under full load (the DAG runs) and with one task in flight at a time
  (a chain), where no batch of other work shares the coordinator's step. Under full load it is
  also given by tenth of the run (the items in order of creation): the first tenths queue
  behind the `--capacity` tasks dispatched at once when the run is submitted.
- bounds: what the cores would allow were they all busy, and what the DAG's longest chain
  would allow at the speed of one task alone; the run's time per level of that chain shows how
  much slower a task goes through under load.
- memory: the coordinator child's peak resident set (VmHWM from /proc/<pid>/status) during each
  size's runs (the peak is reset before them through /proc/<pid>/clear_refs), and its RSS
  before them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from graphlib import TopologicalSorter
from itertools import pairwise
from pathlib import Path

from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from codeyard.bus import Bus, EmbeddedNats, PullWorker, Topology
from codeyard.bus.subjects import ctl_subject, events_subject
from codeyard.config import Settings
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas import (
    MAX_MESSAGE_BYTES,
    Accepted,
    CodeRequest,
    CodeResult,
    ControlReply,
    Patch,
    Result,
    ReviewRequest,
    ReviewResult,
    RunEvent,
    RunState,
    RunStateChanged,
    SubmitRun,
    TaskSpec,
    TestResult,
    WorkItem,
    decode,
    encode,
)
from codeyard.service_runtime import run_service, tune_gc_for_service
from codeyard.testing.dags import random_plan

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(latencies: list[Latency], q: float) -> float:
    ordered = sorted(seconds for _, seconds in latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tenths(latencies: list[Latency]) -> list[float]:
    """Median latency of each tenth of the work items, in the order they were created."""
    ordered = sorted(latencies)
    cuts = [len(ordered) * i // 10 for i in range(11)]
    return [percentile(ordered[a:b], 0.5) for a, b in pairwise(cuts)]


Latency = tuple[datetime, float]  # a work item's creation, seconds until its handler started


async def noop(item: WorkItem, latencies: list[Latency]) -> Result:
    latencies.append((item.sent_at, (datetime.now(UTC) - item.sent_at).total_seconds()))
    if isinstance(item, CodeRequest):
        return CodeResult(patch=Patch(text="+"))
    if isinstance(item, ReviewRequest):
        return ReviewResult(reviewer=item.reviewer, approved=True)
    return TestResult(passed=True)


async def coordinator_process(url: str, capacity: int) -> asyncio.subprocess.Process:
    """`codeyard coordinator` as a child process on the server at `url` (wrapped in
    BENCH_COORDINATOR_WRAPPER, a command prefix such as a profiler, if set)."""
    return await asyncio.create_subprocess_exec(
        *os.environ.get("BENCH_COORDINATOR_WRAPPER", "").split(),
        sys.executable,
        "-m",
        "codeyard",
        "coordinator",
        "--capacity",
        str(capacity),
        cwd=ROOT,
        env=os.environ | {"NATS_URL": url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # stopped as a group: a wrapper (py-spy) may not pass SIGTERM on
    )


def chain(tasks: int) -> list[TaskSpec]:
    return [
        TaskSpec(id=f"c{i}", title=f"step {i}", deps=[f"c{i - 1}"] if i else [])
        for i in range(tasks)
    ]


async def submit(bus: Bus, request: SubmitRun, patience: float = 60.0) -> ControlReply:
    """Submit, waiting for a coordinator to answer (a child just started may not listen yet)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            reply: ControlReply = await bus.request(
                ctl_subject("submit"), request, ControlReply, 30
            )
            return reply
        except NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def independent(tasks: int) -> list[TaskSpec]:
    return [TaskSpec(id=f"t{i}", title=f"task {i}") for i in range(tasks)]


SHAPES = ("random", "independent")


def plan_of(shape: str, tasks: int, seed: int) -> list[TaskSpec]:
    """The plan of one run: `SHAPES`, or a chain (one task in flight at a time)."""
    if shape == "chain":
        return chain(tasks)
    return independent(tasks) if shape == "independent" else random_plan(tasks, seed=seed)


async def one_run(bus: Bus, tasks: int, seed: int, shape: str) -> float:
    """Seconds from submit to the run's `done` event."""
    plan = plan_of(shape, tasks, seed)
    run_id = f"bench{tasks}{shape[0]}{seed}"  # unique per run
    started = time.perf_counter()
    await submit_and_wait(bus, run_id, plan)
    return time.perf_counter() - started


async def submit_and_wait(
    bus: Bus, run_id: str, plan: list[TaskSpec], timeout: float = 600.0
) -> None:
    """Submit a run (its id must be new) and wait until it is `done`."""
    finished: asyncio.Future[RunStateChanged] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        if b'"RunStateChanged"' not in msg.data:  # the harness's share of this process's CPU
            return  # stays small: a step's TaskStatesChanged is not decoded
        event = decode(msg.data, RunEvent)
        finished_now = isinstance(event, RunStateChanged) and event.state in TERMINAL_RUN_STATES
        if finished_now and not finished.done():
            finished.set_result(event)

    # events are JetStream-stored, and a plain subscription sees them as they are published
    subscription = await bus.nc.subscribe(events_subject(run_id), cb=on_event)
    try:
        reply = await submit(bus, SubmitRun(run_id=run_id, goal="bench", plan=plan))
        assert isinstance(reply, Accepted), reply
        event = await asyncio.wait_for(finished, timeout)
    finally:
        await subscription.unsubscribe()
    assert event.state is RunState.DONE, event.reason


async def request_reply_baseline(bus: Bus, count: int = 3000) -> tuple[float, float]:
    async def echo(msg: Msg) -> None:
        await msg.respond(b"ok")

    await bus.nc.subscribe("bench.echo", cb=echo)
    times = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        await bus.nc.request("bench.echo", b"x", timeout=5)
        times.append(time.perf_counter() - t)
    return count / (time.perf_counter() - started), statistics.median(times)


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB (Linux /proc)."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            figures[name] = int(value.split()[0])
    return figures


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (Linux >= 4.0; our own child only)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class SizeFigures:
    tasks: int
    durations: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    tenths: list[list[float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    rss_before_kib: int = 0
    peak_rss_kib: int = 0
    peak_is_lifetime: bool = False


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000], help="DAG sizes")
    parser.add_argument("--runs", type=int, default=3, help="runs per size")
    parser.add_argument("--capacity", type=int, default=256)
    parser.add_argument("--shape", choices=SHAPES, default="random", help="the plans' dependencies")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as store, EmbeddedNats(Path(store)) as server:
        topology = Topology(ack_wait=30)
        bus = await Bus.connect(server.url, topology=topology)
        await bus.setup()
        coordinator = await coordinator_process(server.url, args.capacity)
        latencies: list[Latency] = []
        stop = asyncio.Event()

        async def handle(item: WorkItem) -> Result:
            return await noop(item, latencies)

        workers = [
            asyncio.create_task(PullWorker(bus, role, handle, concurrency=256).run(stop))
            for role in ("coder", "tester", "review")
        ]
        sizes: list[SizeFigures] = []
        too_big: dict[int, int] = {}  # tasks -> bytes of a SubmitRun that cannot be sent
        try:
            baseline_rate, baseline_p50 = await request_reply_baseline(bus)
            await one_run(bus, 50, 999, args.shape)  # warm-up: leader elected, caches
            pids = {
                "coordinator": coordinator.pid,
                "nats-server": server.pid,
                "workers": os.getpid(),
            }
            for tasks in args.tasks:
                plan = plan_of(args.shape, tasks, 0)
                size = len(encode(SubmitRun(run_id="x", goal="bench", plan=plan)))
                if size > MAX_MESSAGE_BYTES:
                    too_big[tasks] = size
                    continue
                figures = SizeFigures(tasks)
                sizes.append(figures)
                figures.rss_before_kib = memory_kib(coordinator.pid)["VmRSS"]
                figures.peak_is_lifetime = not reset_peak_rss(coordinator.pid)
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
                for seed in range(args.runs):
                    latencies.clear()
                    figures.durations.append(await one_run(bus, tasks, seed, args.shape))
                    figures.p50s.append(percentile(latencies, 0.5))
                    figures.p99s.append(percentile(latencies, 0.99))
                    figures.tenths.append(tenths(latencies))
                figures.cpu = {
                    n: cpu_seconds(pid) - cpu_before[n] for n, pid in pids.items() if pid
                }
                figures.peak_rss_kib = memory_kib(coordinator.pid)["VmHWM"]
            idle_p50s, chain_task_seconds = [], []
            for seed in range(args.runs):
                latencies.clear()
                chain_task_seconds.append(await one_run(bus, 100, 100 + seed, "chain") / 100)
                idle_p50s.append(percentile(latencies, 0.5))
        finally:
            stop.set()
            await asyncio.gather(*workers)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(coordinator.pid, signal.SIGTERM)
            await coordinator.wait()
            await bus.close()

    print(f"machine: {os.cpu_count()} cores; nats-server file store; {args.runs} runs, medians")
    alone = statistics.median(chain_task_seconds)
    for figures in sizes:
        print_size(figures, args.capacity, args.shape, baseline_rate, alone)
    for tasks, size in too_big.items():
        print(
            f"DAG: {tasks} tasks: skipped, its SubmitRun is {size} bytes, over the "
            f"{MAX_MESSAGE_BYTES}-byte message limit (a plan travels in one message)"
        )
    idle_p50 = statistics.median(idle_p50s) * 1000
    print(f"one task alone, end to end (100-task chain): {alone * 1000:.2f} ms")
    print(f"dispatch latency p50 on a 100-task chain (one task in flight): {idle_p50:.2f} ms")
    print(f"baseline nats req/reply: {baseline_rate:8.0f} req/s, p50 {baseline_p50 * 1000:.2f} ms")


def critical_path(plan: list[TaskSpec]) -> int:
    """Tasks on the DAG's longest dependency chain."""
    graph = {spec.id: set(spec.deps) for spec in plan}
    depth: dict[str, int] = {}
    for task_id in TopologicalSorter(graph).static_order():
        depth[task_id] = 1 + max((depth[dep] for dep in graph[task_id]), default=0)
    return max(depth.values(), default=0)


def print_size(
    figures: SizeFigures, capacity: int, shape: str, baseline_rate: float, alone_seconds: float
) -> None:
    tasks, runs = figures.tasks, len(figures.durations)
    rate = tasks / statistics.median(figures.durations)
    print(f"DAG: {tasks} tasks ({shape}), capacity {capacity}, no-op coder/tester/reviewer")
    print(f"coordinator throughput:  {rate:8.0f} tasks/s   ({3 * rate:.0f} work items/s)")
    print(f"dispatch latency p50:    {statistics.median(figures.p50s) * 1000:8.2f} ms")
    print(f"dispatch latency p99:    {statistics.median(figures.p99s) * 1000:8.2f} ms")
    by_tenth = " ".join(
        f"{statistics.median(run[i] for run in figures.tenths) * 1000:.2f}" for i in range(10)
    )
    print(f"dispatch latency p50 by tenth of the run (ms): {by_tenth}")
    print(f"ratio tasks/s to baseline req/s: {rate / baseline_rate:.2f}")
    total_tasks = tasks * runs
    depth = statistics.median(critical_path(plan_of(shape, tasks, seed)) for seed in range(runs))
    per_task = ", ".join(
        f"{name} {seconds / total_tasks * 1e6:.0f}" for name, seconds in figures.cpu.items()
    )
    wall = sum(figures.durations) / total_tasks * 1e6
    print(f"CPU per task (us): {per_task}; wall {wall:.0f}")
    cpu_per_task = sum(figures.cpu.values()) / total_tasks
    cores = os.cpu_count() or 1
    print(
        f"bounds: CPU {cores / cpu_per_task:.0f} tasks/s ({cores} cores all busy; they were "
        f"{cpu_per_task * 1e6 / wall / cores:.0%} busy); critical path "
        f"{tasks / (depth * alone_seconds):.0f} tasks/s ({depth} tasks deep, one task alone "
        f"{alone_seconds * 1000:.2f} ms; this run took "
        f"{statistics.median(figures.durations) / depth * 1000:.2f} ms per level)"
    )
    scope = "since start" if figures.peak_is_lifetime else "during these runs"
    print(
        f"coordinator peak RSS ({scope}): {figures.peak_rss_kib / 1024:.0f} MiB "
        f"(RSS before: {figures.rss_before_kib / 1024:.0f} MiB)"
    )


if __name__ == "__main__":
    # The workers here run as `codeyard worker` runs them: the same GC thresholds and event loop.
    tune_gc_for_service()
    run_service(main(), Settings().event_loop)
