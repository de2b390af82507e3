"""The pull-worker contract: ack after effect, redelivery, dead letters, max_deliver, heartbeats,
withdrawn work dropped."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from codeyard.bus import Bus, EmbeddedNats, GiveUp, PullWorker, RetryLater
from codeyard.bus import worker as worker_module
from codeyard.bus.permissions import grants_for
from codeyard.bus.pipeline import Pending, PublishPipeline
from codeyard.bus.subjects import (
    RESULT_PREFIX,
    WORK_STREAM,
    cancel_subject,
    consumer_name,
    work_subject,
)
from codeyard.bus.topology import Topology, ensure_role_consumer
from codeyard.bus.worker import AwaitApproval, Withdrawals, result_msg_id, retried_msg_id
from codeyard.cancellation import stop_tasks
from codeyard.schemas import (
    ApprovalNeeded,
    CodeRequest,
    CodeResult,
    Patch,
    Result,
    ReviewComment,
    ReviewResult,
    TaskSpec,
    UndecodableWork,
    Usage,
    WorkCancelled,
    WorkFailed,
    WorkItem,
    WorkRetried,
    decode,
    encode,
)
from codeyard.schemas.model import MAX_COST_USD, SHORT_TEXT_CHARS
from tests.bus.results import collect_answers, collect_results
from tests.conftest import TEST_TOPOLOGY
from tests.processes import stop

SUBMISSION = "submission1"  # the trace_id the coordinator gives a run's work and notices


def code_request(
    task_id: str, run_id: str = "run1", description: str = "", trace_id: str = SUBMISSION
) -> CodeRequest:
    return CodeRequest(
        run_id=run_id,
        task_id=task_id,
        attempt=1,
        trace_id=trace_id,
        goal="make it work",
        task=TaskSpec(id=task_id, title=f"task {task_id}", description=description),
    )


def echo(name: str = "w") -> Callable[[WorkItem], Awaitable[Result]]:
    async def handle(item: WorkItem) -> Result:
        return CodeResult(patch=Patch(text=f"edit for {item.task_id}"), summary=name)

    return handle


class _Terminated(msgspec.Struct):
    stream_seq: int


@asynccontextmanager
async def terminations(bus: Bus, consumer: str) -> AsyncIterator[asyncio.Queue[int]]:
    """The stream sequences of the work messages `consumer` terms from here on, as the server
    reports them (its MSG_TERMINATED advisories): termed work is never redelivered."""
    termed: asyncio.Queue[int] = asyncio.Queue()

    async def on_advisory(msg: Msg) -> None:
        termed.put_nowait(msgspec.json.decode(msg.data, type=_Terminated).stream_seq)

    advisories = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{WORK_STREAM}.{consumer}"
    subscription = await bus.nc.subscribe(advisories, cb=on_advisory)
    await bus.sync()
    try:
        yield termed
    finally:
        await subscription.unsubscribe()


async def withdraw(
    bus: Bus, task_id: str, run_id: str = "run1", trace_id: str = SUBMISSION
) -> None:
    """Send the coordinator's notice that (run_id, task_id, attempt 1) of the submission
    `trace_id` is no longer wanted."""
    notice = WorkCancelled(
        run_id=run_id, task_id=task_id, attempt=1, trace_id=trace_id, reason="cancelled"
    )
    await bus.nc.publish(cancel_subject(run_id), encode(notice))


async def waiting_for_work(bus: Bus, consumer: str) -> None:
    """Return once a worker asks `consumer` for work: it listens for notices by then."""
    async with asyncio.timeout(5):
        # the server signals nothing: ask until it shows the worker's pull request
        while not (await bus.js.consumer_info(WORK_STREAM, consumer)).num_waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def settled(bus: Bus, consumer: str) -> ConsumerInfo:
    """The consumer's info once no delivery is waiting for its ack (acks follow results, and
    the server applies them asynchronously), or after 5 s as it is then."""
    for _ in range(100):
        info: ConsumerInfo = await bus.js.consumer_info(WORK_STREAM, consumer)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    return info


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll for what no event signals: the connection's state, what a callback counted."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not so after {timeout} s")


class Gate:
    """A handler that holds work whose task id starts with "held" until `release` is set,
    counting how many it ever held at once; it answers other work at once."""

    def __init__(self, full_at: int) -> None:
        self.holding = 0
        self.most = 0
        self.full = asyncio.Event()  # set once it held `full_at` at once
        self.release = asyncio.Event()
        self._full_at = full_at

    async def __call__(self, item: WorkItem) -> Result:
        if item.task_id.startswith("held"):
            self.holding += 1
            self.most = max(self.most, self.holding)
            if self.holding >= self._full_at:
                self.full.set()
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
        return CodeResult(patch=Patch(text=f"edit for {item.task_id}"))


async def consumer_info_when(
    bus: Bus, condition: Callable[[ConsumerInfo], bool], consumer: str = "coder"
) -> ConsumerInfo:
    """The consumer's info once `condition` holds for it (polled: the server signals nothing)."""
    for _ in range(200):
        info: ConsumerInfo = await bus.js.consumer_info(WORK_STREAM, consumer)
        if condition(info):
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server still reports {info}")


@asynccontextmanager
async def serving(worker: PullWorker) -> AsyncIterator[PullWorker]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, grace=5))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_result_carries_the_work_envelope_and_work_is_acked(bus: Bus) -> None:
    request = code_request("t1")
    await bus.publish(work_subject("coder"), request)
    async with serving(PullWorker(bus, "coder", echo())):
        [result] = await collect_results(bus, 1)
    assert isinstance(result, CodeResult)
    assert (result.run_id, result.task_id, result.attempt) == ("run1", "t1", 1)
    assert result.trace_id == request.trace_id
    assert result.msg_id == result_msg_id(request.msg_id)
    info = await settled(bus, "coder")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_malformed_message_is_dead_lettered_and_the_next_one_served(bus: Bus) -> None:
    """It is handed to the coordinator on the coder's result subject, which files it."""
    await bus.js.publish(work_subject("coder"), b'{"type":"CodeRequest","run_id":"run7"')
    await bus.js.publish(work_subject("coder"), b'{"type":"Mystery","run_id":"run7"}')
    await bus.publish(work_subject("coder"), code_request("t2"))
    worker = PullWorker(bus, "coder", echo())
    async with serving(worker):
        broken, unknown, result = await collect_answers(bus, 3)
        await until(lambda: worker.stats.dead_lettered == 2)
    assert not isinstance(result, UndecodableWork)
    assert result.task_id == "t2"
    assert isinstance(broken, UndecodableWork)
    assert isinstance(unknown, UndecodableWork)
    assert "malformed JSON" in broken.error
    assert broken.run_id == ""  # not even JSON: names no run
    assert "unknown message type 'Mystery'" in unknown.error
    assert unknown.run_id == "run7"  # JSON with a valid run_id: names it
    info = await settled(bus, "coder")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_failing_handler_is_retried_then_answered_with_work_failed(bus: Bus) -> None:
    calls = Counter[str]()

    async def flaky(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        raise RuntimeError("model exploded")

    await bus.publish(work_subject("coder"), code_request("t3"))
    worker = PullWorker(bus, "coder", flaky, max_deliver=3, retry_delays=(0.05,))
    async with serving(worker):
        [result] = await collect_results(bus, 1)
    assert isinstance(result, WorkFailed)
    assert result.task_id == "t3"
    assert result.role == "coder"
    assert result.deliveries == 3
    assert "RuntimeError: model exploded" in result.reason
    assert calls["t3"] == 3


async def test_a_work_failed_not_delivered_is_not_counted_until_it_is(bus: Bus) -> None:
    """Counted as failed whether or not its answer went out, an item whose WorkFailed could not
    be sent (the connection dropped) was counted again when it came back."""

    async def impossible(item: WorkItem) -> Result:
        raise GiveUp("never")

    await bus.publish(work_subject("coder"), code_request("t-lost"))
    worker = PullWorker(bus, "coder", impossible, retry_delays=(0.05,))
    real_send, sends = worker._results.send, []

    async def lost_once(result: Result) -> None:
        sends.append(result)
        if len(sends) == 1:
            raise ConnectionError("the connection to nats dropped")
        await real_send(result)

    worker._results.send = lost_once  # type: ignore[method-assign]
    async with serving(worker):
        [result] = await collect_results(bus, 1, timeout=60)
    assert isinstance(result, WorkFailed)
    assert len(sends) == 2
    assert worker.stats.failed == 1


async def test_retry_later_and_give_up(bus: Bus) -> None:
    calls = Counter[str]()

    async def picky(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        if item.task_id == "never":
            raise GiveUp("the task asks for the impossible", usage=Usage(calls=3), model="m")
        if calls[item.task_id] == 1:
            raise RetryLater("rate limited", delay=0.05)
        return CodeResult(patch=Patch(text="ok"))

    await bus.publish(work_subject("coder"), code_request("never"))
    await bus.publish(work_subject("coder"), code_request("later"))
    async with serving(PullWorker(bus, "coder", picky, concurrency=2)):
        results = {r.task_id: r for r in await collect_results(bus, 2)}
    assert isinstance(results["never"], WorkFailed)
    assert results["never"].reason == "the task asks for the impossible"
    assert results["never"].usage == Usage(calls=3)  # what it spent still counts
    assert results["never"].model == "m"  # and the model that spent it is named
    assert isinstance(results["later"], CodeResult)
    assert calls == Counter({"never": 1, "later": 2})


async def test_a_handler_returning_no_result_fails_the_work_once_saying_so(bus: Bus) -> None:
    """It ran again at each delivery, and the failure then blamed workers that kept dying."""
    calls = Counter[str]()

    async def confused(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        return item  # type: ignore[return-value]  # a bug: the request, not an answer

    await bus.publish(work_subject("coder"), code_request("t1"))
    async with serving(PullWorker(bus, "coder", confused)):
        [result] = await collect_results(bus, 1)
    assert isinstance(result, WorkFailed)
    assert result.reason == "the handler returned CodeRequest, not a result"
    assert calls == Counter({"t1": 1})


async def test_a_result_that_cannot_be_encoded_fails_the_work_once_instead_of_rerunning_it(
    bus: Bus,
) -> None:
    """JSON from an LLM endpoint may carry a lone surrogate (`"model": "gpt\\ud800"`), and a
    handler may put a value JSON has no form for in a result (a `Path`: Structs do not check
    types when built). Neither can be encoded: the result could not be sent, so the item came
    back and ran again until its deliveries ran out, and what it spent was lost."""
    calls = Counter[str]()

    async def odd_text(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        if item.task_id == "gives-up":
            raise GiveUp("refused: \ud800", usage=Usage(calls=1), model="gpt\ud800")
        comment = ReviewComment(text="odd \udfff")
        if item.task_id == "holds-a-path":
            comment = ReviewComment(text="odd", path=Path("src/app.py"))  # type: ignore[arg-type]
        return ReviewResult(
            reviewer="review",
            approved=True,
            comments=[comment],
            usage=Usage(calls=2),
            model="gpt\ud800",
        )

    for task_id in ("gives-up", "answers", "holds-a-path"):
        await bus.publish(work_subject("review"), code_request(task_id))
    worker = PullWorker(bus, "review", odd_text, concurrency=3)
    async with serving(worker):
        results = {r.task_id: r for r in await collect_results(bus, 3)}
    gave_up = results["gives-up"]
    assert isinstance(gave_up, WorkFailed)
    assert (gave_up.reason, gave_up.usage, gave_up.model) == ("refused: ?", Usage(calls=1), "gpt?")
    for task_id in ("answers", "holds-a-path"):
        answered = results[task_id]
        assert isinstance(answered, WorkFailed)  # the answer itself cannot be sent
        assert answered.reason.startswith("ReviewResult not valid: a ReviewResult that cannot be")
        assert (answered.usage, answered.model) == (Usage(calls=2), "gpt?")
        assert ("PosixPath" in answered.reason) == (task_id == "holds-a-path")
    assert calls == Counter({"gives-up": 1, "answers": 1, "holds-a-path": 1})
    assert (worker.stats.handled, worker.stats.failed) == (0, 3)


async def test_what_a_retried_delivery_spent_is_reported_once_per_delivery(bus: Bus) -> None:
    # Each delivery pays for an answer, then the model goes away; the third one succeeds.
    # No result carries what the first two spent, so each reports it before handing back.
    spent = Usage(calls=1, prompt_tokens=100, completion_tokens=20)
    calls = Counter[str]()

    async def unlucky(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        if calls[item.task_id] < 3:
            raise RetryLater("the model is unavailable", delay=0.05, usage=spent, model="m1")
        return CodeResult(patch=Patch(text="ok"), usage=spent)

    item = code_request("t1")
    await bus.publish(work_subject("coder"), item)
    async with serving(PullWorker(bus, "coder", unlucky, max_deliver=5)):
        results = await collect_results(bus, 3)

    retried = [r for r in results if isinstance(r, WorkRetried)]
    assert [(r.delivery, r.usage, r.role, r.model) for r in retried] == [
        (1, spent, "coder", "m1"),
        (2, spent, "coder", "m1"),
    ]
    assert [r.msg_id for r in retried] == [retried_msg_id(item.msg_id, d) for d in (1, 2)]
    assert all((r.run_id, r.task_id, r.attempt) == ("run1", "t1", 1) for r in retried)
    [answer] = [r for r in results if isinstance(r, CodeResult)]
    assert answer.msg_id == result_msg_id(item.msg_id)  # not taken by a report
    assert answer.usage == spent  # its own delivery's only: the others are reported already


async def test_what_the_last_delivery_spent_before_retrying_goes_into_work_failed(
    bus: Bus,
) -> None:
    spent = Usage(calls=2, prompt_tokens=300)

    async def unavailable(item: WorkItem) -> Result:
        raise RetryLater("the model is unavailable", delay=0.05, usage=spent, model="m")

    await bus.publish(work_subject("coder"), code_request("t1"))
    async with serving(PullWorker(bus, "coder", unavailable, max_deliver=2)):
        results = await collect_results(bus, 2)

    [first, last] = sorted(results, key=lambda r: isinstance(r, WorkFailed))
    assert isinstance(first, WorkRetried)
    assert (first.delivery, first.usage, first.model) == (1, spent, "m")
    assert isinstance(last, WorkFailed)
    assert (last.deliveries, last.usage, last.model) == (2, spent, "m")


async def test_message_whose_workers_keep_dying_fails_without_running(bus: Bus) -> None:
    # Two deliveries that are never acked stand for two workers killed mid-task.
    await bus.publish(work_subject("coder"), code_request("poison"))
    raw = await bus.js.pull_subscribe_bind(durable="coder", stream=WORK_STREAM)
    for delivery in (1, 2):
        [msg] = await raw.fetch(1, timeout=bus.topology.ack_wait + 5)
        assert msg.metadata.num_delivered == delivery
    await raw.unsubscribe()

    ran = []

    async def must_not_run(item: WorkItem) -> Result:
        ran.append(item.task_id)
        return CodeResult(patch=Patch())

    async with serving(PullWorker(bus, "coder", must_not_run, max_deliver=2)):
        [result] = await collect_results(bus, 1)
    assert isinstance(result, WorkFailed)
    assert result.deliveries == 3
    assert "kept dying" in result.reason
    assert ran == []


async def test_heartbeats_keep_long_work_from_being_redelivered(bus: Bus) -> None:
    calls = Counter[str]()

    async def slow(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        await asyncio.sleep(bus.topology.ack_wait * 2.5)
        return CodeResult(patch=Patch(text="done"))

    await bus.publish(work_subject("coder"), code_request("slow"))
    async with (
        serving(PullWorker(bus, "coder", slow, concurrency=1)),
        serving(PullWorker(bus, "coder", slow, concurrency=1)),
    ):
        [result] = await collect_results(bus, 1)
        await asyncio.sleep(0.5)
    assert isinstance(result, CodeResult)
    assert calls == Counter({"slow": 1})


class SlowResults(PublishPipeline):
    """A pipeline whose result publishes take `delay` seconds to go out (a slow or busy server
    as the worker sees it); other publishes are as usual."""

    def __init__(self, bus: Bus, delay: float) -> None:
        super().__init__(bus.nc)
        self.delay = delay

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        if subject.startswith(RESULT_PREFIX):
            await asyncio.sleep(self.delay)
        return await super().publish(subject, payload, headers)


async def test_heartbeats_go_on_while_the_answer_is_being_sent(bus: Bus) -> None:
    """The handler is done at once, its result takes longer than ack_wait to be sent: the work
    item is not redelivered meanwhile (to this worker or the other one)."""
    calls = Counter[str]()

    async def quick(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        return CodeResult(patch=Patch(text="done"))

    await bus.publish(work_subject("coder"), code_request("slow-answer"))
    usual, bus.pipeline = bus.pipeline, SlowResults(bus, bus.topology.ack_wait * 2.5)
    try:
        async with (
            serving(PullWorker(bus, "coder", quick, concurrency=1)),
            serving(PullWorker(bus, "coder", quick, concurrency=1)),
        ):
            [result] = await collect_results(bus, 1, timeout=bus.topology.ack_wait * 5)
            await asyncio.sleep(0.5)
    finally:
        bus.pipeline = usual
    assert isinstance(result, CodeResult)
    assert calls == Counter({"slow-answer": 1})


async def test_shutdown_naks_unfinished_work_for_immediate_redelivery(bus: Bus) -> None:
    started = asyncio.Event()

    async def endless(item: WorkItem) -> Result:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    await bus.publish(work_subject("coder"), code_request("t-long"))
    stop = asyncio.Event()
    run = asyncio.create_task(PullWorker(bus, "coder", endless).run(stop, grace=0.1))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    await asyncio.wait_for(run, 5)

    raw = await bus.js.pull_subscribe_bind(durable="coder", stream=WORK_STREAM)
    [msg] = await raw.fetch(1, timeout=1.0)  # well before ack_wait: it was nak'ed
    assert decode(msg.data, WorkItem).task_id == "t-long"
    assert msg.metadata.num_delivered == 2
    await msg.ack()


# --- real worker processes --------------------------------------------------------------------


async def spawn_worker(
    bus_url: str, name: str, repo_root: Path, *extra: str
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bus.echo_worker",
        bus_url,
        "coder",
        name,
        *extra,
        cwd=repo_root,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert line == b"READY\n", line
    return process


async def stop_worker(process: asyncio.subprocess.Process) -> None:
    await stop(process, 15)


async def test_worker_killed_before_ack_has_its_message_redelivered_to_another(
    bus: Bus, nats_server: object, repo_root: Path
) -> None:
    url = bus.nc.connected_url
    assert url is not None
    victim = await spawn_worker(url.geturl(), "victim", repo_root, "--hang")
    survivor = None
    try:
        await bus.publish(work_subject("coder"), code_request("t-kill"))
        assert victim.stdout is not None
        line = await asyncio.wait_for(victim.stdout.readline(), 10)
        assert line == b"RECEIVED t-kill\n"
        survivor = await spawn_worker(url.geturl(), "survivor", repo_root)
        victim.kill()
        await victim.wait()
        [result] = await collect_results(bus, 1, timeout=bus.topology.ack_wait + 15)
    finally:
        await stop_worker(victim)
        if survivor:
            await stop_worker(survivor)
    assert isinstance(result, CodeResult)
    assert result.task_id == "t-kill"
    assert result.summary == "survivor"


async def test_two_workers_on_one_durable_consumer_split_the_load(
    bus: Bus, repo_root: Path
) -> None:
    url = bus.nc.connected_url
    assert url is not None
    workers = [
        await spawn_worker(url.geturl(), name, repo_root, "--delay", "0.05")
        for name in ("alpha", "beta")
    ]
    try:
        await bus.publish_many([(work_subject("coder"), code_request(f"t{i}")) for i in range(40)])
        results = await collect_results(bus, 40, timeout=60)
    finally:
        for worker in workers:
            await stop_worker(worker)
    assert sorted(r.task_id for r in results) == sorted(f"t{i}" for i in range(40))
    by_worker = Counter(r.summary for r in results if isinstance(r, CodeResult))
    assert set(by_worker) == {"alpha", "beta"}
    assert min(by_worker.values()) >= 8, by_worker


async def test_no_result_is_stored_twice_when_a_worker_republishes(bus: Bus) -> None:
    request = code_request("t-dup")
    result = CodeResult(
        run_id="run1",
        task_id="t-dup",
        attempt=1,
        msg_id=result_msg_id(request.msg_id),
        patch=Patch(text="x"),
    )
    first = await bus.publish("cy.result.coder", result)
    again = await bus.publish("cy.result.coder", msgspec.structs.replace(result))
    assert not first.duplicate
    assert again.duplicate
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 1
    [stored] = await collect_results(bus, 1)
    assert stored == result


@pytest.mark.parametrize(
    "notice_trace",
    [SUBMISSION, "run1"],
    ids=["naming-the-submission", "naming-the-run-as-older-coordinators-do"],
)
async def test_withdrawn_work_is_stopped_and_dropped(bus: Bus, notice_trace: str) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def endless(item: WorkItem) -> Result:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        raise AssertionError("unreachable")

    await bus.publish(work_subject("coder"), code_request("t-withdrawn"))
    async with serving(PullWorker(bus, "coder", endless)):
        await asyncio.wait_for(started.wait(), 5)
        await withdraw(bus, "t-withdrawn", trace_id=notice_trace)
        await asyncio.wait_for(stopped.wait(), 5)
        info = await settled(bus, "coder")
    assert info.num_ack_pending == 0  # dropped for good, not redelivered
    assert info.num_pending == 0
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 0  # and nothing answered


async def test_work_withdrawn_while_the_worker_stops_is_dropped_without_waiting(
    bus: Bus,
) -> None:
    """A stopping worker gives its running work a grace period to finish; it stopped hearing
    withdrawals before it, so withdrawn work ran on (or was handed back to run again)."""
    started = asyncio.Event()

    async def endless(item: WorkItem) -> Result:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    await bus.publish(work_subject("coder"), code_request("t1"))
    stop = asyncio.Event()
    running = asyncio.create_task(PullWorker(bus, "coder", endless).run(stop, grace=30))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    await asyncio.sleep(0.2)  # in its grace period
    await withdraw(bus, "t1")
    await asyncio.wait_for(running, 5)
    info = await settled(bus, "coder")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)  # dropped, not handed back


async def test_a_withdrawal_stops_every_copy_of_the_work_running_here(bus: Bus) -> None:
    """A leader taking over sends outstanding work again under the same id, which JetStream
    stores again once its duplicate window has passed (work coming back after ack_wait runs
    twice too): one worker may run two copies of the same work. A withdrawal stopped one, and
    the other ran to its end and was answered."""
    started: list[WorkItem] = []
    both = asyncio.Event()

    async def endless(item: WorkItem) -> Result:
        started.append(item)
        if len(started) == 2:
            both.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    for _ in range(2):  # stored twice: no message id, as after the duplicate window
        await bus.js.publish(work_subject("coder"), encode(code_request("t1")))
    async with serving(PullWorker(bus, "coder", endless, concurrency=2)):
        await asyncio.wait_for(both.wait(), 5)
        await withdraw(bus, "t1")
        info = await settled(bus, "coder")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)  # both dropped for good
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 0  # neither answered


async def test_work_waiting_for_a_person_is_handed_back_as_approval_needed(bus: Bus) -> None:
    spent = Usage(calls=1, prompt_tokens=150, completion_tokens=50)  # asking the model first

    async def asks(item: WorkItem) -> Result:
        raise AwaitApproval(
            "a1b2c3d4e5f60718",
            "run_command",
            "make deploy",
            "not a test tool",
            usage=spent,
            model="m",
        )

    await bus.publish(work_subject("tester"), code_request("t1"))
    async with serving(PullWorker(bus, "tester", asks)):
        [result] = await collect_results(bus, 1)
    assert isinstance(result, ApprovalNeeded)
    assert (result.role, result.approval_id, result.detail) == (
        "tester",
        "a1b2c3d4e5f60718",
        "make deploy",
    )
    assert (result.task_id, result.attempt) == ("t1", 1)
    assert result.usage == spent  # the run counts it: the work sent again spends anew
    assert result.model == "m"
    info = await settled(bus, "tester")
    assert info.num_ack_pending == 0  # handed back means acked: it is not redelivered


async def test_work_withdrawn_while_waiting_in_the_stream_never_runs(bus: Bus) -> None:
    """A notice is not stored: one for work that has not reached a handler yet is remembered
    until the work comes, which is then termed without running."""
    busy, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def handle(item: WorkItem) -> Result:
        ran.append(item.task_id)
        if item.task_id == "t-busy":
            busy.set()
            await release.wait()
        return CodeResult(patch=Patch(text="done"))

    worker = PullWorker(bus, "coder", handle)  # one at a time: t-later waits behind t-busy
    await bus.publish(work_subject("coder"), code_request("t-busy"))
    async with terminations(bus, "coder") as termed, serving(worker):
        await asyncio.wait_for(busy.wait(), 5)
        later = await bus.publish(work_subject("coder"), code_request("t-later"))
        await withdraw(bus, "t-later")
        async with asyncio.timeout(5):  # the notice has no answer: look for its effect
            while ("run1", SUBMISSION, "t-later", 1) not in worker._withdrawn:  # noqa: ASYNC110 - no signal
                await asyncio.sleep(0.01)
        release.set()
        [result] = await collect_results(bus, 1)
        assert await asyncio.wait_for(termed.get(), 5) == later.seq
        info = await settled(bus, "coder")
    assert result.task_id == "t-busy"
    assert ran == ["t-busy"]  # t-later never ran
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert len(worker._withdrawn) == 0  # forgotten once termed


async def test_work_withdrawn_while_awaiting_redelivery_is_dropped_when_it_comes_back(
    bus: Bus,
) -> None:
    # Delivered to a worker that dies before answering: it comes back after ack_wait.
    orphan = await bus.publish(work_subject("coder"), code_request("t-orphan"))
    raw = await bus.js.pull_subscribe_bind(durable="coder", stream=WORK_STREAM)
    assert len(await raw.fetch(1, timeout=5)) == 1
    await raw.unsubscribe()

    ran: list[str] = []

    async def handle(item: WorkItem) -> Result:
        ran.append(item.task_id)
        return CodeResult(patch=Patch(text="done"))

    worker = PullWorker(bus, "coder", handle)
    async with terminations(bus, "coder") as termed, serving(worker):
        await waiting_for_work(bus, "coder")
        await withdraw(bus, "t-orphan")
        assert await asyncio.wait_for(termed.get(), bus.topology.ack_wait + 5) == orphan.seq
        info = await settled(bus, "coder")
    assert ran == []
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 0


async def test_withdrawn_work_whose_handler_swallows_the_cancellation_is_dropped(
    bus: Bus,
) -> None:
    """nats-py waits for replies with `wait_for`, which on Python 3.11 swallows a cancellation
    that lands as the reply arrives: the handler then returns a result all the same."""
    started = asyncio.Event()

    async def stubborn(item: WorkItem) -> Result:
        started.set()
        # as wait_for does when the reply comes in the same turn as the cancellation
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return CodeResult(patch=Patch(text="unwanted"))

    worker = PullWorker(bus, "coder", stubborn)
    work = await bus.publish(work_subject("coder"), code_request("t-stubborn"))
    async with terminations(bus, "coder") as termed, serving(worker):
        await asyncio.wait_for(started.wait(), 5)
        await withdraw(bus, "t-stubborn")
        assert await asyncio.wait_for(termed.get(), 5) == work.seq
        info = await settled(bus, "coder")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert (await bus.js.stream_info("CY_RESULTS")).state.messages == 0  # the result dropped
    assert len(worker._withdrawn) == 0  # and the withdrawal forgotten


async def test_work_withdrawn_as_its_handler_ends_is_answered_all_the_same(bus: Bus) -> None:
    """A withdrawal that comes once the handler ended finds nothing running to stop: the item
    is answered and acked (the coordinator ignores answers for a run it withdrew work from).
    One that cancelled the answering halfway left the item, depending on where it landed,
    neither answered, nak'd nor termed, to come back after ack_wait."""
    calls = Counter[str]()

    async def gives_up(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        # the notice comes back from the server while the worker sends the WorkFailed
        await withdraw(bus, item.task_id)
        raise GiveUp("the task asks for the impossible")

    await bus.publish(work_subject("coder"), code_request("t1"))
    worker = PullWorker(bus, "coder", gives_up)
    async with serving(worker):
        [result] = await collect_results(bus, 1)
        await asyncio.sleep(bus.topology.ack_wait + 0.5)  # time to come back, were it unacked
        info = await settled(bus, "coder")
    assert isinstance(result, WorkFailed)
    assert result.reason == "the task asks for the impossible"
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    assert calls == Counter({"t1": 1})
    assert worker.stats.failed == 1


def test_withdrawals_are_remembered_for_a_while_and_only_so_many() -> None:
    withdrawals = Withdrawals(limit=3, keep=0.2)
    for n in range(5):
        withdrawals.add(("run1", "s1", f"t{n}", 1))
    assert len(withdrawals) == 3  # the oldest went first
    assert ("run1", "s1", "t1", 1) not in withdrawals
    assert ("run1", "s1", "t4", 1) in withdrawals

    time.sleep(0.25)
    assert ("run1", "s1", "t4", 1) not in withdrawals  # too old to wait for
    withdrawals.add(("run2", "s2", "t1", 1))
    assert len(withdrawals) == 1  # and dropped at the next withdrawal


def test_a_withdrawal_names_one_submission_of_a_run_unless_it_names_the_run() -> None:
    withdrawals = Withdrawals()
    withdrawals.add(("run1", "s1", "t1", 1))
    assert ("run1", "s1", "t1", 1) in withdrawals
    assert ("run1", "s2", "t1", 1) not in withdrawals  # the run id submitted again
    withdrawals.add(("run1", "run1", "t2", 1))  # from a coordinator that did not name it
    assert ("run1", "s1", "t2", 1) in withdrawals
    assert ("run1", "s2", "t2", 1) in withdrawals
    withdrawals.discard(("run1", "s2", "t2", 1))  # the work came and was dropped
    assert ("run1", "s1", "t2", 1) not in withdrawals


async def test_a_withdrawal_leaves_the_work_of_a_later_submission_of_the_run_id_alone(
    bus: Bus,
) -> None:
    """An operator deleted a cancelled run's record and the run id was submitted again: the
    old run's notices, remembered for minutes, dropped the new run's work without an answer."""
    ran: list[str] = []

    async def handle(item: WorkItem) -> Result:
        ran.append(item.trace_id)
        return CodeResult(patch=Patch(text="done"))

    worker = PullWorker(bus, "coder", handle)
    async with serving(worker):
        await waiting_for_work(bus, "coder")  # it hears notices from now on
        await withdraw(bus, "t1", trace_id="old-submission")
        async with asyncio.timeout(5):  # the notice has no answer: look for its effect
            while not len(worker._withdrawn):  # noqa: ASYNC110 - no signal
                await asyncio.sleep(0.01)
        await bus.publish(work_subject("coder"), code_request("t1", trace_id="new-submission"))
        [result] = await collect_results(bus, 1)
    assert ran == ["new-submission"]
    assert isinstance(result, CodeResult)


async def test_a_result_too_big_to_send_is_answered_with_work_failed(bus: Bus) -> None:
    """Sent again, it would be as big: the task fails at once, with the reason; the results
    finishing with it are stored as usual."""

    async def handle(item: WorkItem) -> Result:
        size = bus.nc.max_payload if item.task_id == "t-huge" else 10
        return CodeResult(patch=Patch(text="+" * size), usage=Usage(calls=2), model="m")

    for task_id in ("t-small", "t-huge", "t-also-small"):
        await bus.publish(work_subject("coder"), code_request(task_id))
    worker = PullWorker(bus, "coder", handle, concurrency=3, max_deliver=2)
    async with serving(worker):
        results = {result.task_id: result for result in await collect_results(bus, 3)}
        info = await settled(bus, "coder")
    huge = results.pop("t-huge")
    assert isinstance(huge, WorkFailed)
    # the patch is what is too large, and what to do about it (here the server's max_payload
    # is codeyard's own limit already: raising it would not help)
    assert huge.reason.startswith(
        f"CodeResult too big to send: its patch of {bus.nc.max_payload} characters is too "
        "large for one message: the result is "
    )
    assert f"max_payload of {bus.nc.max_payload} bytes" in huge.reason
    assert huge.reason.endswith(
        "split the task into smaller ones (1048576 bytes is the most a codeyard message may be)"
    )
    assert (huge.deliveries, huge.usage) == (1, Usage(calls=2))  # at once; its spend counts
    assert huge.model == "m"  # and names its model
    assert all(isinstance(result, CodeResult) for result in results.values())
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert (worker.stats.handled, worker.stats.failed) == (2, 1)


def work(prefix: str, count: int) -> list[tuple[str, CodeRequest]]:
    return [(work_subject("coder"), code_request(f"{prefix}{i}")) for i in range(count)]


async def test_a_worker_keeps_every_slot_busy_however_the_server_splits_its_requests(
    bus: Bus,
) -> None:
    """nats-server hands messages to a worker's open pull requests in turn, not oldest first:
    however it split them, the worker runs as many handlers as its concurrency once its
    requests ended. (Charging each message to the oldest request lost a slot for good each
    time a request was charged in full while still owed some: 16 handlers ran as 7.)"""
    concurrency = 8
    gate = Gate(full_at=concurrency)
    worker = PullWorker(bus, "coder", gate, concurrency=concurrency, fetch_timeout=0.5)
    async with serving(worker):
        await consumer_info_when(bus, lambda info: info.num_waiting == 1)  # asked for 8
        await bus.publish_many(work("quick", 4))
        await collect_results(bus, 4)
        await consumer_info_when(bus, lambda info: info.num_waiting == 2)  # and for 4 more
        await bus.publish_many(work("held", 4))  # the server gives each request 2
        await until(lambda: gate.holding == 4)
        # Both requests expire (after 0.5 s), each still owed 2: a span of time, which only
        # the worker hears the end of (a 408 on each request's inbox).
        await asyncio.sleep(1.5)
        await bus.publish_many(work("held-later", 2 * concurrency))
        await asyncio.wait_for(gate.full.wait(), 10)
        gate.release.set()
        await collect_results(bus, 4 + 2 * concurrency)
    assert gate.most == concurrency
    assert worker.stats.handed_back == 0


async def test_after_an_outage_a_worker_serves_on_and_never_beyond_its_concurrency(
    tmp_path: Path,
) -> None:
    """While nats-server is away a worker sends no pull request: nats-py would buffer one per
    expiry and send them all on reconnect, to be filled on top of those asked anew (18
    handlers ran on a worker of concurrency 2). Nor does nats-py refusing to buffer more, as it
    does once a long outage filled its buffer, stop the worker."""
    concurrency = 2
    server = EmbeddedNats(tmp_path)  # this test's own: the session's must stay up
    async with server:
        bus = await Bus.connect(server.url, topology=TEST_TOPOLOGY)
        try:
            await bus.setup()
            bus.nc._max_pending_size = 200  # stands for the 2 MiB a longer outage fills
            gate = Gate(full_at=concurrency)
            worker = PullWorker(bus, "coder", gate, concurrency=concurrency, fetch_timeout=0.5)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop, grace=5))
            await bus.publish_many(work("before", 1))
            await collect_results(bus, 1)  # it is serving

            await asyncio.to_thread(server.stop)
            # An outage is a span of time: its requests' deadlines (2 * 0.5 + 1 s) pass twice.
            await asyncio.sleep(4.5)
            assert not running.done(), running
            await asyncio.to_thread(server.start)  # same port, same store
            await until(lambda: bus.connected)

            await bus.publish_many(work("held", 3 * concurrency))
            await asyncio.wait_for(gate.full.wait(), 10)
            # the server delivered all it will until a handler finishes: nothing is left to
            # deliver, or no request is left to deliver it to
            await consumer_info_when(bus, lambda info: not info.num_pending or not info.num_waiting)
            gate.release.set()
            await collect_results(bus, 3 * concurrency, timeout=30)
            assert not running.done(), running
            stop.set()
            await asyncio.wait_for(running, 10)
        finally:
            await bus.close()
    assert gate.most == concurrency
    assert worker.stats.handed_back == 0  # nothing was delivered beyond what it asked for


async def test_work_delivered_beyond_concurrency_is_handed_back(bus: Bus) -> None:
    """After a short drop of the connection the server may still hold the requests a worker
    forgot on reconnecting, and fill them on top of those asked anew: the worker hands what
    exceeds its concurrency back at once, for whoever has room."""
    concurrency = 2
    gate = Gate(full_at=concurrency)
    worker = PullWorker(bus, "coder", gate, concurrency=concurrency, fetch_timeout=30)
    async with serving(worker):
        await consumer_info_when(bus, lambda info: info.num_waiting == 1)
        for listener in bus.reconnected:  # what a reconnect does; this server kept the request
            listener()
        await consumer_info_when(bus, lambda info: info.num_waiting == 2)
        await bus.publish_many(work("held", 2 * concurrency))
        await asyncio.wait_for(gate.full.wait(), 10)
        await until(lambda: worker.stats.handed_back == concurrency)
        gate.release.set()
        await collect_results(bus, 2 * concurrency)
    assert gate.most == concurrency
    info = await settled(bus, "coder")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_a_result_the_coordinator_would_refuse_is_answered_with_work_failed(
    bus: Bus,
) -> None:
    """Encoding does not check a schema's limits; stored, such a result would be dead-lettered
    and its task would wait for it forever. A long reason to give up is cut to fit."""

    async def handle(item: WorkItem) -> Result:
        if item.task_id == "t-gives-up":
            raise GiveUp("the model kept answering nonsense: " + "x" * 30_000)
        return CodeResult(patch=Patch(text="+"), summary="s" * 20_001, usage=Usage(calls=1))

    for task_id in ("t-too-long", "t-gives-up"):
        await bus.publish(work_subject("coder"), code_request(task_id))
    worker = PullWorker(bus, "coder", handle, concurrency=2)
    async with serving(worker):
        results = {result.task_id: result for result in await collect_results(bus, 2)}
        info = await settled(bus, "coder")
    refused, gave_up = results["t-too-long"], results["t-gives-up"]
    assert isinstance(refused, WorkFailed)
    assert refused.reason.startswith("CodeResult not valid: a CodeResult the coordinator ")
    assert "$.summary" in refused.reason
    assert refused.usage == Usage(calls=1)
    assert isinstance(gave_up, WorkFailed)
    assert len(gave_up.reason) == 20_000
    assert gave_up.reason.startswith("the model kept answering nonsense: xxx")
    assert gave_up.reason.endswith("characters cut]")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_usage_beyond_its_bounds_is_reported_at_its_bounds(bus: Bus) -> None:
    """A handler's usage is not validated where it is built: one past the schema's bounds makes
    the result invalid, and the WorkFailed answering instead reports the usage at them."""

    async def handle(item: WorkItem) -> Result:
        return CodeResult(patch=Patch(text="+"), usage=Usage(calls=1, cost_usd=1e308))

    await bus.publish(work_subject("coder"), code_request("t-costly"))
    async with serving(PullWorker(bus, "coder", handle)):
        [failed] = await collect_results(bus, 1)
        info = await settled(bus, "coder")
    assert isinstance(failed, WorkFailed)
    assert "$.usage.cost_usd" in failed.reason
    assert failed.usage == Usage(calls=1, cost_usd=MAX_COST_USD)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_model_name_too_long_for_a_result_is_cut_to_fit(bus: Bus) -> None:
    """The name is the endpoint's to choose: one past the schema's bound would make what the
    worker sends invalid, losing the reason and what was spent; it is cut instead."""
    long_name = "m" * 5000

    async def named(item: WorkItem) -> Result:
        match item.task_id:
            case "retried":
                raise RetryLater("unavailable", delay=30, usage=Usage(calls=1), model=long_name)
            case "failed":
                raise GiveUp("impossible", usage=Usage(calls=1), model=long_name)
        raise AwaitApproval("a1b2c3d4e5f60718", "run_command", "make", "ask", model=long_name)

    for task_id in ("retried", "failed", "waiting"):
        await bus.publish(work_subject("coder"), code_request(task_id))
    async with serving(PullWorker(bus, "coder", named, concurrency=3)):
        results = {type(result): result for result in await collect_results(bus, 3)}

    assert set(results) == {WorkRetried, WorkFailed, ApprovalNeeded}
    failed = results[WorkFailed]
    assert isinstance(failed, WorkFailed)
    assert failed.reason == "impossible"  # not replaced for being invalid
    for result in results.values():
        assert isinstance(result, WorkRetried | WorkFailed | ApprovalNeeded)
        assert len(result.model) == SHORT_TEXT_CHARS
        assert result.model.startswith("m" * 100)


async def test_heartbeats_follow_a_shorter_ack_wait_of_the_consumer_once_it_exists(
    bus: Bus,
) -> None:
    """The coordinator creates the built-in roles' consumers with its own ack_wait: a worker
    beating at a third of a longer one of its own had its work redelivered while it ran."""
    await bus.js.delete_consumer(WORK_STREAM, consumer_name("coder"))
    worker = PullWorker(bus, "coder", echo())
    assert TEST_TOPOLOGY.ack_wait == 2.0
    matching = asyncio.create_task(worker._match_ack_wait())
    await asyncio.sleep(0.1)  # looked for it, and found none yet
    await ensure_role_consumer(bus.js, "coder", Topology(ack_wait=0.9))
    try:
        await wait_for_interval(worker, 0.3)
    finally:
        await stop_tasks([matching])


async def wait_for_interval(worker: PullWorker, interval: float) -> None:
    for _ in range(200):
        if worker._heartbeats.interval == pytest.approx(interval):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"beating every {worker._heartbeats.interval} s, not {interval}")


async def test_heartbeats_follow_the_consumers_ack_wait_as_it_changes(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator restarted with a shorter ack_wait updates the consumer: a worker that
    looked it up once, as it started, kept beating too rarely and had its work redelivered."""
    monkeypatch.setattr(worker_module, "ACK_WAIT_RECHECK_SECONDS", 0.05)
    worker = PullWorker(bus, "coder", echo())
    matching = asyncio.create_task(worker._match_ack_wait())
    try:
        await ensure_role_consumer(bus.js, "coder", Topology(ack_wait=1.2))
        await wait_for_interval(worker, 0.4)
        await ensure_role_consumer(bus.js, "coder", Topology(ack_wait=0.6))
        await wait_for_interval(worker, 0.2)
        await ensure_role_consumer(bus.js, "coder", TEST_TOPOLOGY)  # longer again: its own
        await wait_for_interval(worker, TEST_TOPOLOGY.ack_wait / 3)
    finally:
        await stop_tasks([matching])


async def test_work_taken_before_the_shorter_ack_wait_was_known_is_not_redelivered(
    bus: Bus,
) -> None:
    """A worker asks for work before it looks up the consumer's ack_wait: the first items start
    beating at a third of its own, longer one, and their first beat, scheduled then, came after
    the consumer's ack_wait had run out: they ran twice."""
    assert bus.topology.ack_wait == 2.0  # the consumer's, as the coordinator created it
    await bus.publish(work_subject("tester"), code_request("t1"))
    calls = Counter[str]()

    async def slow(item: WorkItem) -> Result:
        calls[item.task_id] += 1
        await asyncio.sleep(2 * bus.topology.ack_wait)
        return CodeResult(patch=Patch(text="+"))

    # a tester, which may not create its consumer, with an ack_wait of 30 s of its own
    tester = Bus(bus.nc, Topology(ack_wait=30.0), grants_for("tester"))
    worker = PullWorker(tester, "tester", slow, concurrency=2)
    async with serving(worker):
        [result] = await collect_results(bus, 1, timeout=10 * bus.topology.ack_wait)
    assert worker._heartbeats.interval == pytest.approx(bus.topology.ack_wait / 3)
    assert result.task_id == "t1"
    assert calls == Counter({"t1": 1})
