"""Plugin reviewers' consumers are the coordinator's to create (a worker that may create its
consumer may make it deliver work anywhere): on submission, on takeover, and as a planner's
plan first sends work to one; a plugin worker not allowed to create its own waits for it."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from codeyard.bus import Bus, PullWorker
from codeyard.bus.permissions import consumer_create_subject, grants_for, principal_of_role
from codeyard.bus.subjects import WORK_STREAM, consumer_name, work_subject
from codeyard.bus.topology import work_consumer
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import Accepted, CancelRun, RunState, SubmitRun, TaskSpec, TaskState
from codeyard.testing.scripted_worker import Script
from tests.coordinator.harness import ask, running_coordinator, status, wait_until, workers_of


def as_plugin_worker(bus: Bus, role: str) -> Bus:
    """`bus` with the grants of `role`'s user, less the creation of its consumer: a plugin
    worker must then wait for the coordinator's."""
    grants = grants_for(principal_of_role(role))
    create = consumer_create_subject(WORK_STREAM, consumer_name(role), work_subject(role))
    publish = tuple(subject for subject in grants.publish if subject != create)
    worker_bus = Bus(bus.nc, bus.topology, msgspec.structs.replace(grants, publish=publish))
    assert not worker_bus.may_publish(create)
    return worker_bus


async def consumer_of(bus: Bus, role: str) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await bus.js.consumer_info(WORK_STREAM, consumer_name(role))
    except nats.js.errors.NotFoundError:
        return None
    return info


async def created(bus: Bus, role: str, timeout: float = 10.0) -> ConsumerInfo:
    """`role`'s consumer, once it exists (polled: the server signals nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (info := await consumer_of(bus, role)) is None:
        assert loop.time() < deadline, f"no consumer of {role} after {timeout} s"
        await asyncio.sleep(0.05)
    return info


def assert_configured_as_a_worker_would(bus: Bus, info: ConsumerInfo, role: str) -> None:
    """The coordinator's consumer is the one a plugin worker allowed to would create: an
    existing deployment's finds no conflict with it."""
    ours = work_consumer(role, bus.topology)
    config = info.config
    assert config.durable_name == consumer_name(role)
    assert config.filter_subject == work_subject(role)
    assert (config.ack_policy, config.deliver_policy) == (AckPolicy.EXPLICIT, DeliverPolicy.ALL)
    assert config.ack_wait == ours.ack_wait
    assert config.max_deliver == ours.max_deliver == -1
    assert config.max_ack_pending == ours.max_ack_pending
    assert config.deliver_subject is None  # a pull consumer: delivers nowhere of its own


def script(tmp_path: Path, plan: list[TaskSpec] | None = None) -> Script:
    """Scripted answers for every role (reviewers approve); a planner proposes `plan`."""
    plan_file = None
    if plan is not None:
        plan_file = tmp_path / "plan.json"
        plan_file.write_bytes(msgspec.json.encode(plan))
    args = argparse.Namespace(
        plan=plan_file, fail_tests="", reject="", hang_on="", delay=0.0, log=None, tokens=0
    )
    return Script(args)


@asynccontextmanager
async def serving(worker: PullWorker) -> AsyncIterator[PullWorker]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, grace=1))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_submission_creates_its_plugin_reviewers_consumers_before_it_is_accepted(
    bus: Bus,
) -> None:
    plan = [TaskSpec(id="a", title="a"), TaskSpec(id="b", title="b", reviewers=["review.lint"])]
    submit = SubmitRun(run_id="r1", goal="g", plan=plan, reviewers=["review", "review.security"])
    assert await consumer_of(bus, "review.security") is None
    async with running_coordinator(Coordinator(bus, name="coord-a")) as coordinator:
        reply = await ask(bus, "submit", submit)
        assert isinstance(reply, Accepted), reply
        # there when the run is: before any of its work could be sent
        security = await consumer_of(bus, "review.security")
        lint = await consumer_of(bus, "review.lint")
        assert coordinator.reviewer_consumers.created == {"review.security", "review.lint"}
    assert security is not None
    assert security.config.filter_subject == "cy.work.review.security"
    assert_configured_as_a_worker_would(bus, security, "review.security")
    assert lint is not None
    assert_configured_as_a_worker_would(bus, lint, "review.lint")


async def test_a_coordinator_taking_over_creates_the_consumers_its_open_runs_need(
    bus: Bus,
) -> None:
    plan = [TaskSpec(id="a", title="a", reviewers=["review.security"])]
    async with running_coordinator(Coordinator(bus, name="coord-a")):
        reply = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
        assert isinstance(reply, Accepted), reply
    # gone meanwhile (deleted by hand, or the run came from a coordinator before this one)
    await bus.js.delete_consumer(WORK_STREAM, consumer_name("review.security"))
    async with running_coordinator(Coordinator(bus, name="coord-b")) as successor:
        assert (await status(bus, "r1")).tasks["a"].state is TaskState.CODING  # no review sent
        info = await created(bus, "review.security")
        assert successor.reviewer_consumers.created == {"review.security"}
    assert_configured_as_a_worker_would(bus, info, "review.security")


async def test_a_plugin_worker_not_allowed_to_create_its_consumer_waits_quietly_then_serves(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = script(tmp_path).answer
    security = PullWorker(as_plugin_worker(bus, "review.security"), "review.security", answers)
    async with serving(security):
        await asyncio.sleep(3)  # several refused pulls and ack_wait lookups
        assert await consumer_of(bus, "review.security") is None  # it did not create it
        # (its own lines: the session's server may carry other tests' connections, whose
        # reconnect attempts to servers they outlived are logged too)
        own = ("codeyard.bus.worker", "codeyard.bus.consumer", "codeyard.bus.topology")
        said = [r for r in caplog.records if r.levelno >= logging.INFO and r.name in own]
        assert not said, [r.getMessage() for r in said]
        handlers = dict.fromkeys(("coder", "tester", "review"), answers)
        async with running_coordinator(Coordinator(bus, name="coord-a")), workers_of(bus, handlers):
            plan = [TaskSpec(id="a", title="a")]
            submit = SubmitRun(run_id="r1", goal="g", plan=plan, reviewers=["review.security"])
            reply = await ask(bus, "submit", submit)
            assert isinstance(reply, Accepted), reply
            run = await wait_until(bus, "r1", timeout=30)
    assert run.state is RunState.DONE
    assert run.tasks["a"].approvals == {"review.security": True}
    assert security.stats.handled == 1


async def test_a_reviewer_named_by_a_planners_plan_gets_its_consumer_and_serves(
    bus: Bus, tmp_path: Path
) -> None:
    plan = [TaskSpec(id="a", title="a", reviewers=["review.style"])]
    answers = script(tmp_path, plan).answer
    style = PullWorker(as_plugin_worker(bus, "review.style"), "review.style", answers)
    handlers = dict.fromkeys(("planner", "coder", "tester", "review"), answers)
    async with (
        serving(style),
        running_coordinator(Coordinator(bus, name="coord-a")) as coordinator,
        workers_of(bus, handlers),
    ):
        reply = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g"))  # to be planned
        assert isinstance(reply, Accepted), reply
        assert coordinator.reviewer_consumers.created == set()  # the run named only `review`
        run = await wait_until(bus, "r1", timeout=30)
    assert run.state is RunState.DONE
    assert run.tasks["a"].approvals == {"review.style": True}
    assert style.stats.handled == 1


async def test_a_consumer_that_cannot_be_created_yet_is_tried_again_and_the_run_kept(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    # A work queue lets one consumer only take a subject: this one makes the creation fail.
    squatter = ConsumerConfig(
        durable_name="squatter",
        filter_subject=work_subject("review.security"),
        ack_policy=AckPolicy.EXPLICIT,
    )
    await bus.js.add_consumer(WORK_STREAM, squatter)
    plan = [TaskSpec(id="a", title="a")]
    submit = SubmitRun(run_id="r1", goal="g", plan=plan, reviewers=["review.security"])
    async with running_coordinator(Coordinator(bus, name="coord-a")) as coordinator:
        reply = await ask(bus, "submit", submit)
        assert isinstance(reply, Accepted), reply
        assert await consumer_of(bus, "review.security") is None
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("cannot create the consumer of review.security yet" in m for m in warned)
        await bus.js.delete_consumer(WORK_STREAM, "squatter")
        info = await created(bus, "review.security")
        assert coordinator.reviewer_consumers.created == {"review.security"}
        assert (await status(bus, "r1")).state is not RunState.FAILED
    assert_configured_as_a_worker_would(bus, info, "review.security")


async def test_a_consumer_deleted_while_a_coordinator_leads_is_created_again_while_needed(
    bus: Bus,
) -> None:
    """Deleted by hand, a plugin's consumer was made again only by the next leader: the run's
    reviews waited in the stream until then. The leader finds it gone when it reads the
    consumers for its metrics; once no open run names the reviewer, it lets it be."""
    plan = [TaskSpec(id="a", title="a", reviewers=["review.security"])]
    leader = Coordinator(bus, name="coord-a", metrics_interval=0.1)
    async with running_coordinator(leader):
        reply = await ask(bus, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
        assert isinstance(reply, Accepted), reply
        await created(bus, "review.security")
        await asyncio.sleep(0.3)  # a listing or two of it
        await bus.js.delete_consumer(WORK_STREAM, consumer_name("review.security"))
        info = await created(bus, "review.security")
        assert_configured_as_a_worker_would(bus, info, "review.security")

        assert isinstance(await ask(bus, "cancel", CancelRun(run_id="r1")), Accepted)
        assert (await wait_until(bus, "r1")).state is RunState.CANCELLED
        await bus.js.delete_consumer(WORK_STREAM, consumer_name("review.security"))
        await asyncio.sleep(0.5)  # several listings without it
        assert await consumer_of(bus, "review.security") is None
