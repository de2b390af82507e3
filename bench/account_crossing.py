"""What a worker's own NATS account costs on the bus path a worker uses, against one account.

    python -m bench.account_crossing [--items 2000] [--runs 3] [--concurrency 64]
                                     [--in-flight 128] [--requests 500]

Two layouts of `codeyard deploy nats-config`, each on a fresh nats-server (file store, loopback
only) started with the generated configuration, per run (the order alternates between runs):

- single account: every user in the server's one global account (`accounts=False`), the
  baseline;
- accounts: the services in the account holding the streams, the coder in an account of its
  own that reaches JetStream through service imports (`JS.CODEYARD.API`), as deployed.

In each, all in this process, timed with one clock:

- end to end: the coordinator user sets up the topology and keeps `--in-flight` work items
  outstanding on `cy.work.coder` (published in batches with their publish acks, as a step
  sends its work), until `--items` were sent. A `PullWorker` connected as the coder, with
  `--concurrency` handlers, answers each with a no-op `CodeResult` (pull, result published
  with its publish ack, work acked). The coordinator side pulls the results from its own
  consumer on CY_RESULTS, as the coordinator does, and acks them; an item is done when its
  result arrives there. Figures: items/s (first publish -> last result), dispatch latency
  (the item's `sent_at` -> its handler starting), round trip (the item's creation -> its
  result at the coordinator), and nats-server CPU per item (/proc).
- request/reply, one at a time, as the coder: a direct get of a small object's info in
  cy_artifacts (`ObjectReader.info`, 1 request), the whole object (`ObjectReader.read`: the
  info and its one chunk, 2 requests), and CONSUMER.INFO of its consumer; median round trip
  over `--requests` requests.

Figures are the median over `--runs` runs; the last column is accounts / single account, both
measured in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg

from codeyard.bus import Bus, EmbeddedNats, PullWorker, Topology
from codeyard.bus.consumer import PullConsumer
from codeyard.bus.embedded import free_port
from codeyard.bus.object_reader import ObjectReader
from codeyard.bus.subjects import (
    ARTIFACTS_BUCKET,
    COORDINATOR_CONSUMER,
    RESULT_STREAM,
    WORK_STREAM,
    work_subject,
)
from codeyard.config import Settings
from codeyard.deploy.nats_config import Deployment, ServerOptions, write_deployment
from codeyard.schemas import CodeRequest, CodeResult, Patch, Result, TaskSpec, WorkItem, decode
from codeyard.schemas.messages import ResultBatch, ResultMessage
from codeyard.service_runtime import run_service, tune_gc_for_service
from codeyard.workspace.snapshots import artifact_store

TASK = TaskSpec(id="bench", title="bench")
OBJECT = "bench-object"
LAYOUTS = {"single account": False, "accounts": True}  # name -> write_deployment's `accounts`
ROLES = ["coder"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RunFigures:
    """One run of one layout."""

    rate: float = 0.0  # items/s end to end
    dispatch: list[float] = field(default_factory=list)  # sent_at -> handler start, seconds
    round_trip: list[float] = field(default_factory=list)  # creation -> result at coordinator
    server_cpu_per_item: float = 0.0  # seconds
    requests: dict[str, float] = field(default_factory=dict)  # name -> median round trip

    def figures(self) -> dict[str, float]:
        """Every figure of the run, by its row in the table (milliseconds, microseconds)."""
        return {
            "items/s end to end": self.rate,
            "dispatch p50 ms (sent_at -> handler)": percentile(self.dispatch, 0.5) * 1e3,
            "dispatch p99 ms": percentile(self.dispatch, 0.99) * 1e3,
            "round trip p50 ms (-> result back)": percentile(self.round_trip, 0.5) * 1e3,
            "round trip p99 ms": percentile(self.round_trip, 0.99) * 1e3,
            "nats-server CPU us/item": self.server_cpu_per_item * 1e6,
            **{f"{name} p50 ms": seconds * 1e3 for name, seconds in self.requests.items()},
        }


class Results:
    """The coordinator's side: pulls results from its consumer on CY_RESULTS, acks them, and
    calls `done(task_id)` for each result they hold (several in a `ResultBatch`)."""

    def __init__(self, bus: Bus, done: Callable[[str], None], window: int) -> None:
        self.bus = bus
        self.done = done
        self.window = window
        self.received: asyncio.Queue[Msg] = asyncio.Queue()
        self.wake = asyncio.Event()  # to look again at how many results to ask for
        self.consumer = PullConsumer(
            bus.nc, RESULT_STREAM, COORDINATOR_CONSUMER, self._deliver, expires=5.0
        )
        self.consumer.on_ask_again = self.wake.set

    def _deliver(self, msg: Msg) -> None:
        self.received.put_nowait(msg)
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        asking = asyncio.create_task(self._ask(stop))
        try:
            while not stop.is_set():
                msg = await self.received.get()
                message: ResultMessage = decode(msg.data, ResultMessage)
                results = message.results if isinstance(message, ResultBatch) else (message,)
                await self.bus.publisher.ack(msg)
                for result in results:
                    self.done(result.task_id)
        finally:
            asking.cancel()
            await self.consumer.stop()

    async def _ask(self, stop: asyncio.Event) -> None:
        """Keep about `window` results asked for, as the coordinator does."""
        while not stop.is_set():
            self.wake.clear()
            self.consumer.forget_expired()
            missing = self.window - self.consumer.outstanding
            if missing >= self.window // 4 or self.consumer.outstanding == 0:
                await self.consumer.request(missing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)


async def end_to_end(
    coordinator: Bus, coder: Bus, items: int, concurrency: int, in_flight: int, tag: str
) -> RunFigures:
    """`items` work items through a no-op coder, `in_flight` outstanding at a time."""
    figures = RunFigures()
    created: dict[str, float] = {}  # task id -> time.monotonic() at its creation
    free = in_flight
    room = asyncio.Event()
    room.set()
    all_done = asyncio.Event()

    def done(task_id: str) -> None:
        nonlocal free
        started = created.pop(task_id, None)
        if started is None:  # a duplicate (a redelivery): counted once
            return
        figures.round_trip.append(time.monotonic() - started)
        free += 1
        room.set()
        if len(figures.round_trip) == items:
            all_done.set()

    async def handle(item: WorkItem) -> Result:
        figures.dispatch.append((datetime.now(UTC) - item.sent_at).total_seconds())
        return CodeResult(patch=Patch(text="+"))

    stop = asyncio.Event()
    results = Results(coordinator, done, 2 * in_flight)
    collecting = asyncio.create_task(results.run(stop))
    worker = PullWorker(coder, "coder", handle, concurrency=concurrency)
    serving = asyncio.create_task(worker.run(stop, grace=5))
    sent = 0
    started = time.monotonic()
    try:
        while sent < items:
            await room.wait()
            room.clear()
            batch = []
            for i in range(sent, sent + min(free, items - sent)):
                task_id = f"{tag}-{i}"
                created[task_id] = time.monotonic()
                item = CodeRequest(run_id=tag, task_id=task_id, attempt=1, goal="g", task=TASK)
                batch.append((work_subject("coder"), item))
            free -= len(batch)
            sent += len(batch)
            await coordinator.publish_many(batch)
        await asyncio.wait_for(all_done.wait(), 120)
        figures.rate = items / (time.monotonic() - started)
    finally:
        stop.set()
        await serving
        collecting.cancel()
        await asyncio.gather(collecting, return_exceptions=True)
    return figures


async def round_trips(request: Callable[[], Awaitable[object]], count: int) -> float:
    """Median seconds of `request`, one at a time."""
    times = []
    for _ in range(count):
        started = time.monotonic()
        await request()
        times.append(time.monotonic() - started)
    return statistics.median(times)


async def one_layout(args: argparse.Namespace, accounts: bool, tag: str) -> RunFigures:
    """One run of one layout, on a server of its own."""
    with tempfile.TemporaryDirectory(prefix="cy-account-crossing-") as scratch:
        directory = Path(scratch)
        port = free_port()
        options = ServerOptions(port=port, store_dir=directory / "jetstream")
        deployment = write_deployment(directory, options=options, accounts=accounts)
        server = EmbeddedNats(
            directory, port=port, config_file=deployment.config_file, tied_to_parent=True
        )
        with server:
            assert server.pid is not None
            return await measure(args, server, deployment, tag)


async def measure(
    args: argparse.Namespace, server: EmbeddedNats, deployment: Deployment, tag: str
) -> RunFigures:
    topology = Topology(ack_wait=30)

    async def connect(principal: str) -> Bus:
        credentials = deployment.credentials(principal)
        return await Bus.connect(
            server.url, name=f"bench-{principal}", credentials=credentials, topology=topology
        )

    coordinator = await connect("coordinator")
    coder = await connect("coder")
    try:
        await coordinator.setup(roles=ROLES)
        store = await artifact_store(coordinator.js)
        await store.put(OBJECT, b"x" * 1024)
        reader = ObjectReader(coder.js, ARTIFACTS_BUCKET)
        warm_up = min(200, args.items)
        await end_to_end(coordinator, coder, warm_up, args.concurrency, args.in_flight, "w" + tag)
        pid = server.pid
        assert pid is not None
        cpu_before = cpu_seconds(pid)
        figures = await end_to_end(
            coordinator, coder, args.items, args.concurrency, args.in_flight, tag
        )
        figures.server_cpu_per_item = (cpu_seconds(pid) - cpu_before) / args.items
        requests: dict[str, Callable[[], Awaitable[object]]] = {
            "object info (1 direct get)": lambda: reader.info(OBJECT),
            "object read (2 direct gets)": lambda: reader.read(OBJECT),
            "consumer info": lambda: coder.js.consumer_info(WORK_STREAM, "coder"),
        }
        for name, request in requests.items():
            await round_trips(request, min(50, args.requests))  # warm-up
            figures.requests[name] = await round_trips(request, args.requests)
        return figures
    finally:
        await coder.close()
        await coordinator.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000, help="work items per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per layout")
    parser.add_argument("--concurrency", type=int, default=64, help="the coder's handlers")
    parser.add_argument("--in-flight", type=int, default=128, help="work items outstanding")
    parser.add_argument("--requests", type=int, default=500, help="requests per request figure")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    for run in range(args.runs):
        order = list(LAYOUTS) if run % 2 == 0 else list(reversed(LAYOUTS))
        for name in order:
            figures = await one_layout(args, LAYOUTS[name], f"r{run}")
            runs[name].append(figures.figures())

    print(
        f"machine: {os.cpu_count()} cores; nats-server file store, a fresh one per layout and "
        f"run; {args.items} work items, coder concurrency {args.concurrency}, "
        f"{args.in_flight} in flight; {args.requests} requests each; medians of {args.runs} runs"
    )
    single, accounts = (
        {row: statistics.median(run[row] for run in runs[name]) for row in runs[name][0]}
        for name in LAYOUTS
    )
    print(f"{'':40} {'single account':>15} {'accounts':>10} {'accounts/single':>16}")
    for row, baseline in single.items():
        ratio = accounts[row] / baseline if baseline else float("nan")
        print(f"{row:40} {baseline:15.3f} {accounts[row]:10.3f} {ratio:16.2f}")


if __name__ == "__main__":
    # The worker here runs as `codeyard worker` runs it: the same GC thresholds and event loop.
    tune_gc_for_service()
    run_service(main(), Settings().event_loop)
