"""Running the coordinator and scripted workers as real processes, and watching runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from nats.js.api import DeliverPolicy

from codeyard.bus import Bus, PullWorker
from codeyard.bus.subjects import (
    EVENT_STREAM,
    LEADER_BUCKET,
    WORK_STREAM,
    consumer_name,
    events_subject,
)
from codeyard.bus.worker import Handler
from codeyard.coordinator.lease import LEASE_KEY, holder_of
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.coordinator.service import Coordinator
from codeyard.follow import ask_coordinator
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    ControlError,
    ControlReply,
    Envelope,
    Patch,
    Run,
    RunEvent,
    RunStatus,
    StatusQuery,
    SubmitRun,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    decode,
)
from codeyard.testing.scripted_worker import Script
from tests.conftest import TEST_TOPOLOGY

ROOT = Path(__file__).resolve().parents[2]


def child_env(url: str) -> dict[str, str]:
    return os.environ | {
        "NATS_URL": url,
        "CODEYARD_ACK_WAIT": str(TEST_TOPOLOGY.ack_wait),
        "CODEYARD_LEADER_TTL": str(TEST_TOPOLOGY.leader_ttl),
        "PYTHONUNBUFFERED": "1",
    }


class Processes:
    """Child processes of a test; every one still alive is killed when the test ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: list[asyncio.subprocess.Process] = []

    async def start(
        self, *args: str, ready: bytes | None = b"READY", env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """`env`: added to the child's environment (its NATS user, say)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=child_env(self.url) | dict(env or {}),
            stdout=asyncio.subprocess.PIPE,
        )
        self.running.append(process)
        if ready is not None:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line.startswith(ready), line
        return process

    async def coordinator(
        self, name: str, capacity: int = 32, env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        command = ("-m", "codeyard", "coordinator", "--name", name, "--capacity", str(capacity))
        return await self.start(*command, ready=None, env=env)

    async def worker(
        self, *options: str, env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        return await self.start("-m", "codeyard.testing.scripted_worker", *options, env=env)

    async def stop_all(self) -> None:
        for process in self.running:
            if process.returncode is None:
                process.kill()
            await process.wait()


@asynccontextmanager
async def running_coordinator(coordinator: Coordinator) -> AsyncIterator[Coordinator]:
    """`coordinator` run in this process: entered once it leads, stopped on leaving."""
    stop = asyncio.Event()
    running = asyncio.create_task(coordinator.run(stop))
    try:
        await asyncio.wait_for(coordinator.leading.wait(), 10)
        # Its control subscriptions are on the server once a round trip after them is: a
        # request sent before would find no responder (the CLI asks again; a test's own
        # request does not).
        await coordinator.bus.nc.flush()
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


@asynccontextmanager
async def workers_answering(
    bus: Bus, answer: Handler, roles: Sequence[str] = ("coder", "tester", "review")
) -> AsyncIterator[None]:
    """In-process workers of `roles`, each item answered by `answer`; stopped on leaving."""
    async with workers_of(bus, dict.fromkeys(roles, answer)):
        yield


@asynccontextmanager
async def workers_of(
    bus: Bus, handlers: Mapping[str, Handler], concurrency: int = 1
) -> AsyncIterator[None]:
    """In-process workers, one per role of `handlers`, each answering with the role's handler
    (up to `concurrency` items at once); stopped on leaving."""
    stop = asyncio.Event()
    running = [
        asyncio.create_task(
            PullWorker(bus, role, handler, concurrency=concurrency).run(stop, grace=1)
        )
        for role, handler in handlers.items()
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*running)


def scripted_coder() -> Handler:
    """A coder that writes a file per task, as `codeyard.testing.scripted_worker` does."""
    args = argparse.Namespace(
        plan=None, fail_tests="", reject="", hang_on="", delay=0.0, log=None, tokens=0
    )
    return Script(args).answer


@asynccontextmanager
async def processes(url: str) -> AsyncIterator[Processes]:
    children = Processes(url)
    try:
        yield children
    finally:
        await children.stop_all()


async def ask(bus: Bus, verb: str, request: Envelope, timeout: float = 30.0) -> ControlReply:
    """A control request, retried while no coordinator leads (startup, failover)."""
    return await ask_coordinator(bus, verb, request, patience=timeout)


async def submit(bus: Bus, plan: Sequence[TaskSpec] | None, run_id: str = "run1") -> str:
    tasks = list(plan) if plan is not None else None
    reply = await ask(bus, "submit", SubmitRun(run_id=run_id, goal="build it", plan=tasks))
    assert not isinstance(reply, ControlError), reply
    return reply.run_id


async def status(bus: Bus, run_id: str) -> Run:
    reply = await ask(bus, "status", StatusQuery(run_id=run_id))
    assert isinstance(reply, RunStatus), reply
    return reply.runs[0]


async def wait_for_task(bus: Bus, run_id: str, task_id: str, state: TaskState) -> Run:
    """Poll until the run's task is in `state`; the run as it is then."""
    for _ in range(300):
        run = await status(bus, run_id)
        if run.tasks.get(task_id) is not None and run.tasks[task_id].state is state:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} never reached {state}: {run.tasks[task_id].state}")


async def wait_until(bus: Bus, run_id: str, merged: int = 0, timeout: float = 120.0) -> Run:
    """Poll until the run finishes, or until at least `merged` of its tasks are merged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await status(bus, run_id)
        done = sum(task.state is TaskState.MERGED for task in run.tasks.values())
        if run.state in TERMINAL_RUN_STATES or (merged and done >= merged):
            return run
        assert loop.time() < deadline, f"run {run_id} is {run.state} with {done} merged"
        await asyncio.sleep(0.2)


async def work_for_coders(bus: Bus, count: int) -> list[CodeRequest]:
    """Take `count` work items off the coders' queue, as a coder would (acked: nobody else
    gets them)."""
    subscription = await bus.js.pull_subscribe_bind(
        durable=consumer_name("coder"), stream=WORK_STREAM
    )
    items: list[CodeRequest] = []
    try:
        while len(items) < count:
            for msg in await subscription.fetch(count - len(items), timeout=10):
                items.append(decode(msg.data, CodeRequest))
                await msg.ack()
    finally:
        await subscription.unsubscribe()
    return items


def patched(item: CodeRequest, text: str) -> CodeResult:
    """A coder's answer to `item`, its envelope copied as a worker's is."""
    return CodeResult(
        run_id=item.run_id,
        task_id=item.task_id,
        attempt=item.attempt,
        trace_id=item.trace_id,
        proof=item.proof,
        patch=Patch(text=text),
    )


async def run_events(bus: Bus, run_id: str) -> list[RunEvent]:
    """Every event of the run, in stream order."""
    subject = events_subject(run_id)
    info = await bus.js.stream_info(EVENT_STREAM, subjects_filter=subject)
    expected = (info.state.subjects or {}).get(subject, 0)
    subscription = await bus.js.subscribe(
        subject, stream=EVENT_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    events: list[RunEvent] = []
    try:
        while len(events) < expected:
            msg = await subscription.next_msg(timeout=10)
            events.append(decode(msg.data, RunEvent))
    finally:
        await subscription.unsubscribe()
    return events


def tasks_moved_to(state: TaskState, events: Sequence[RunEvent]) -> set[str]:
    """The ids of the tasks `events` tell moved to `state`."""
    return {
        change.task_id
        for event in events
        if isinstance(event, TaskStatesChanged)
        for change in event.changes
        if change.state is state
    }


def assert_dependency_order(plan: Sequence[TaskSpec], events: Sequence[RunEvent]) -> None:
    """Every task started coding only after each of its dependencies was merged.

    Events are at least once: after a failover a transition may be reported again, so the
    first report of each counts, and a task may not be merged at two different attempts."""
    changes = [
        change
        for event in events
        if isinstance(event, TaskStatesChanged)
        for change in event.changes
    ]
    started: dict[str, int] = {}
    merged: dict[str, int] = {}
    merged_attempt: dict[str, int] = {}
    for index, change in enumerate(changes):
        if change.state is TaskState.CODING:
            started.setdefault(change.task_id, index)
        elif change.state is TaskState.MERGED:
            previous = merged_attempt.setdefault(change.task_id, change.attempt)
            assert previous == change.attempt, f"{change.task_id} merged at two attempts"
            merged.setdefault(change.task_id, index)
    assert set(merged) == {spec.id for spec in plan}
    for spec in plan:
        for dep in spec.deps:
            assert merged[dep] < started[spec.id], f"{spec.id} started before {dep} merged"


async def leader_name(bus: Bus) -> str:
    entry = await (await bus.js.key_value(LEADER_BUCKET)).get(LEASE_KEY)
    assert entry.value is not None
    return holder_of(entry.value)


def completed_work(log: Path) -> list[tuple[str, str, str]]:
    """(message type, task, attempt) of each work item the scripted workers finished."""
    if not log.exists():
        return []
    return [tuple(line.split()[:3]) for line in log.read_text().splitlines()]  # type: ignore[misc]


def done_twice(log: Path) -> list[tuple[str, str, str]]:
    """The work items the scripted workers finished more than once."""
    return [item for item, count in Counter(completed_work(log)).items() if count > 1]


def assert_nothing_done_twice(log: Path) -> None:
    twice = done_twice(log)
    assert not twice, f"work done twice: {twice[:5]}"
