"""Scaling with coder processes: throughput with 1, 2, 4, 8 coders at a fixed LLM latency.

    python -m bench.coder_scaling [--coders 1 2 4 8] [--tasks 64] [--delay 0.2] [--runs 3]

A real nats-server (file store) and the coordinator run as child processes. The coders are
separate worker processes (`python -m codeyard.testing.scripted_worker --roles coder --delay D
--concurrency 1`): each speaks the real bus protocol (pull consumer, heartbeats, result, ack)
and takes `--delay` seconds per work item, standing in for an LLM call of fixed latency, one at
a time, as one `codeyard worker coder` process does. Tester and reviewer are no-op workers in
this process, so the coder stage is the bottleneck. The plan is `--tasks` independent tasks,
enough to keep every coder busy; the coordinator's capacity is the number of tasks.

Why scripted workers rather than `codeyard worker coder` with the scripted OpenAI server: the
real coder needs a repository snapshot per work item and the coordinator then merges into a
git clone and runs the repository's test suite in the sandbox after each merge, which on this
2-core machine would measure git and the sandbox, not how the system scales with coders.

- throughput: tasks / (submit -> run done), median over `--runs`.
- efficiency: (throughput_n / throughput_1) / n; 100 % is linear.
- baseline: the ideal time tasks x delay / n, from the same parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.coordinator_throughput import (
    ROOT,
    Latency,
    coordinator_process,
    cpu_seconds,
    noop,
    submit_and_wait,
)
from codeyard.bus import Bus, EmbeddedNats, PullWorker, Topology
from codeyard.schemas import Result, TaskSpec, WorkItem

READY_TIMEOUT = 60.0


def independent(tasks: int) -> list[TaskSpec]:
    return [TaskSpec(id=f"w{i}", title=f"task {i}") for i in range(tasks)]


async def start_coders(count: int, url: str, delay: float) -> list[asyncio.subprocess.Process]:
    coders = []
    for _ in range(count):
        coder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "codeyard.testing.scripted_worker",
            "--roles",
            "coder",
            "--delay",
            str(delay),
            "--concurrency",
            "1",
            cwd=ROOT,
            env=os.environ | {"NATS_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        coders.append(coder)
    for coder in coders:
        assert coder.stdout is not None
        line = await asyncio.wait_for(coder.stdout.readline(), READY_TIMEOUT)
        if line.strip() != b"READY":
            raise RuntimeError(f"a coder did not start: {line!r}")
    return coders


async def stop_processes(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coders", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tasks", type=int, default=64, help="independent tasks per run")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per coder work item")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    durations: dict[int, list[float]] = {}
    coordinator_cpu: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as store, EmbeddedNats(Path(store)) as server:
        topology = Topology(ack_wait=30)
        bus = await Bus.connect(server.url, topology=topology)
        await bus.setup()
        coordinator = await coordinator_process(server.url, args.tasks)
        stop = asyncio.Event()
        ignored: list[Latency] = []

        async def handle(item: WorkItem) -> Result:
            return await noop(item, ignored)

        workers = [
            asyncio.create_task(PullWorker(bus, role, handle, concurrency=256).run(stop))
            for role in ("tester", "review")
        ]
        coders: list[asyncio.subprocess.Process] = []
        try:
            for count in args.coders:
                coders = await start_coders(count, server.url, args.delay)
                # warm-up: leader elected, every coder has pulled once
                await submit_and_wait(bus, f"warm{count}", independent(count))
                cpu_before = cpu_seconds(coordinator.pid)
                for run in range(args.runs):
                    run_id = f"scale{count}x{run}"
                    started = time.perf_counter()
                    await submit_and_wait(bus, run_id, independent(args.tasks))
                    durations.setdefault(count, []).append(time.perf_counter() - started)
                coordinator_cpu[count] = cpu_seconds(coordinator.pid) - cpu_before
                await stop_processes(coders)
                coders = []
        finally:
            stop.set()
            await stop_processes(coders)
            await asyncio.gather(*workers)
            coordinator.terminate()
            await coordinator.wait()
            await bus.close()

    print(
        f"machine: {os.cpu_count()} cores; {args.tasks} independent tasks; coder latency "
        f"{args.delay * 1000:.0f} ms (scripted coder processes, one item at a time); "
        f"no-op tester/reviewer; medians of {args.runs} runs"
    )
    print(
        f"{'coders':>6} {'seconds':>8} {'ideal s':>8} {'tasks/s':>8} {'speedup':>8} "
        f"{'efficiency':>10} {'coord CPU %':>11}"
    )
    base_rate = args.tasks / statistics.median(durations[args.coders[0]]) / args.coders[0]
    for count in args.coders:
        seconds = statistics.median(durations[count])
        rate = args.tasks / seconds
        ideal = args.tasks * args.delay / count
        cpu_share = coordinator_cpu[count] / sum(durations[count]) * 100
        print(
            f"{count:6} {seconds:8.2f} {ideal:8.2f} {rate:8.2f} {rate / base_rate:8.2f} "
            f"{rate / base_rate / count * 100:9.1f}% {cpu_share:10.1f}%"
        )


if __name__ == "__main__":
    asyncio.run(main())
