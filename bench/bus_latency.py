"""Bus latency: core request/reply, and JetStream work dispatch (publish -> handler start).

    python -m bench.bus_latency [--count 2000] [--load 64] [--runs 3]

A real nats-server (file store, the real topology from `Bus.setup()`) runs as a child process;
the publisher and the worker are two connections in this process, timed with one monotonic
clock.

- baseline: core NATS request/reply (nats-py, a responder on the second connection), one
  request at a time.
- dispatch, sequential: a `CodeRequest` published to `cy.work.coder` (JetStream, as the
  coordinator sends work) -> a `PullWorker`'s handler starting on it, one item in flight (the
  next is published once the handler has started and answered).
- dispatch, under load: the same with `--load` items in flight (a new one is published as soon
  as a handler starts) and the worker's concurrency equal to the load.
- publish ack: JetStream publish -> stream ack, sequential (part of what dispatch pays).

Figures are p50/p99 per run, then the median over `--runs` runs; ratios are to the baseline
p50 of the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

from nats.aio.msg import Msg

from codeyard.bus import Bus, EmbeddedNats, PullWorker, Topology
from codeyard.bus.subjects import work_subject
from codeyard.schemas import CodeRequest, CodeResult, Patch, Result, TaskSpec, WorkItem

TASK = TaskSpec(id="bench", title="bench")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def request_reply(client: Bus, server: Bus, count: int) -> list[float]:
    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    subscription = await server.nc.subscribe("bench.echo", cb=echo)
    await server.sync()  # in place before the client asks
    payload = b"x" * 300  # about the size of a small work item
    times = []
    for _ in range(count):
        started = time.monotonic()
        await client.nc.request("bench.echo", payload, timeout=5)
        times.append(time.monotonic() - started)
    await subscription.unsubscribe()
    return times


async def publish_acks(bus: Bus, count: int) -> list[float]:
    times = []
    for _ in range(count):
        item = CodeRequest(run_id="benchack", task_id="bench", attempt=1, goal="g", task=TASK)
        started = time.monotonic()
        await bus.publish("cy.events.benchack", item)  # a stream with no consumer waiting
        times.append(time.monotonic() - started)
    return times


async def dispatch(publisher: Bus, worker_bus: Bus, count: int, in_flight: int) -> list[float]:
    """Publish `count` work items keeping `in_flight` outstanding; seconds from each publish
    to its handler starting."""
    published: dict[str, float] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(in_flight)
    all_started = asyncio.Event()

    async def handle(item: WorkItem) -> Result:
        latencies.append(time.monotonic() - published.pop(item.msg_id))
        slots.release()
        if len(latencies) == count:
            all_started.set()
        return CodeResult(patch=Patch(text="+"))

    stop = asyncio.Event()
    worker = PullWorker(worker_bus, "coder", handle, concurrency=in_flight)
    serving = asyncio.create_task(worker.run(stop, grace=5))
    sends: set[asyncio.Task[object]] = set()
    try:
        for i in range(count):
            await slots.acquire()
            item = CodeRequest(run_id="bench", task_id=f"t{i}", attempt=1, goal="g", task=TASK)
            published[item.msg_id] = time.monotonic()
            send = asyncio.create_task(publisher.publish(work_subject("coder"), item))
            sends.add(send)
            send.add_done_callback(sends.discard)
            if in_flight == 1:  # one at a time: also wait for the stream's ack
                await send
        await asyncio.wait_for(all_started.wait(), 60)
        await asyncio.gather(*sends)
    finally:
        stop.set()
        await serving
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="messages per measurement")
    parser.add_argument("--load", type=int, default=64, help="items in flight under load")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    figures: dict[str, list[tuple[float, float, float]]] = {}

    async def record(name: str, measuring: Awaitable[list[float]]) -> None:
        started = time.monotonic()
        times = await measuring
        rate = len(times) / (time.monotonic() - started)
        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
        figures.setdefault(name, []).append((p50, p99, rate))

    with tempfile.TemporaryDirectory() as store, EmbeddedNats(Path(store)) as server:
        topology = Topology(ack_wait=30)
        publisher = await Bus.connect(server.url, name="bench-publisher", topology=topology)
        worker_bus = await Bus.connect(server.url, name="bench-worker", topology=topology)
        try:
            await publisher.setup()
            await request_reply(publisher, worker_bus, 200)  # warm-up
            await dispatch(publisher, worker_bus, 200, 1)
            for _ in range(args.runs):
                baseline = request_reply(publisher, worker_bus, args.count)
                await record("core request/reply (baseline)", baseline)
                await record("JetStream publish -> ack", publish_acks(publisher, args.count))
                sequential = dispatch(publisher, worker_bus, args.count, 1)
                await record("dispatch, 1 in flight", sequential)
                loaded = dispatch(publisher, worker_bus, args.count, args.load)
                await record(f"dispatch, {args.load} in flight", loaded)
        finally:
            await publisher.close()
            await worker_bus.close()

    print(
        f"machine: {os.cpu_count()} cores; nats-server file store; {args.count} messages per "
        f"measurement; medians of {args.runs} runs"
    )
    base_p50 = statistics.median(run[0] for run in figures["core request/reply (baseline)"])
    print(f"{'':32} {'p50 ms':>8} {'p99 ms':>8} {'p50 / baseline':>15} {'msgs/s':>8}")
    for name, runs in figures.items():
        p50, p99, rate = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"{name:32} {p50 * 1000:8.3f} {p99 * 1000:8.3f} {p50 / base_p50:15.2f} {rate:8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
