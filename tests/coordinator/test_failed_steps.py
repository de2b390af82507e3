"""A step that failed (trouble on the bus, a bug) hands back what it held, to the next
leadership session: its results come again at once rather than after ack_wait, and its
requests' clients are told to send them again rather than left to wait out their timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import nats.errors

from codeyard.bus import Bus, EmbeddedNats, Topology
from codeyard.bus.subjects import ctl_subject, journal_subject
from codeyard.coordinator.artifact_collector import ArtifactCollector
from codeyard.coordinator.service import Coordinator
from codeyard.follow import ask_coordinator
from codeyard.schemas import (
    Accepted,
    ApprovalList,
    Approve,
    ArtifactsCollected,
    CancelRun,
    CollectArtifacts,
    ControlError,
    ControlReply,
    Envelope,
    ListApprovals,
    SubmitRun,
    TaskSpec,
    decode,
    encode,
)
from codeyard.schemas.model import RunState
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import (
    ask,
    running_coordinator,
    status,
    submit,
    wait_until,
    workers_answering,
)
from tests.coordinator.plans import spec
from tests.coordinator.store_faults import DiesBefore, LosesEvents
from tests.coordinator.test_recovery import answer_at_once

# Long enough that a run waiting for it to pass fails the test: the wait is what is tested.
SLOW_REDELIVERY = Topology(ack_wait=300.0, leader_ttl=2.0)


async def test_the_results_of_a_step_that_failed_come_again_at_once(tmp_path: Path) -> None:
    """The step failed before its journal entry was written: the run is as it was before the
    step, waiting for the results the step held. Unacked, they came again after ack_wait
    (30 s by default); the work sent again is dropped as a copy of what was answered."""
    async with EmbeddedNats(tmp_path) as server:  # this test's own: its ack_wait is long
        bus = await Bus.connect(server.url, topology=SLOW_REDELIVERY)
        coordinator_bus = await Bus.connect(
            server.url, name="coordinator", topology=SLOW_REDELIVERY
        )
        fault = DiesBefore(coordinator_bus, journal_subject("r1"), armed=False)
        coordinator_bus.pipeline = fault
        try:
            await bus.setup()
            async with (
                running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)),
                workers_answering(bus, answer_at_once),
            ):
                await submit(bus, [spec("a"), spec("b", "a")], "r1")
                fault.armed = True
                run = await wait_until(bus, "r1", timeout=60)
        finally:
            await coordinator_bus.close()
            await bus.close()

    assert fault.died
    assert run.state is RunState.DONE


async def test_a_request_whose_step_failed_is_told_to_come_again(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """Its reply was never sent: the client waited out its try (10 s) before asking again."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = DiesBefore(coordinator_bus, journal_subject("r2"), armed=False)
    coordinator_bus.pipeline = fault
    cancel = CancelRun(run_id="r2", reason="enough")
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)):
            await submit(bus, [spec("a")], "r2")  # no worker: it waits for its coder
            fault.armed = True
            raw = await bus.nc.request(ctl_subject("cancel"), encode(cancel), timeout=5)
            told = decode(raw.data, ControlReply)
            again = await ask(bus, "cancel", cancel)
            run = await status(bus, "r2")
    finally:
        await coordinator_bus.close()

    assert fault.died
    assert isinstance(told, ControlError)
    assert told.retry, told
    assert isinstance(again, Accepted), again
    assert run.state is RunState.CANCELLED


class HeldCollection:
    """A garbage collection that takes until `release` is set (a large store, say)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def collect(self, dry_run: bool = False) -> ArtifactsCollected:
        self.started.set()
        await self.release.wait()
        return ArtifactsCollected(dry_run=dry_run, retention_seconds=0, deleted=[])

    async def collect_periodically(self, first_after: float, interval: float) -> None:
        await asyncio.Event().wait()  # only asked for here


async def test_requests_still_queued_when_the_leadership_ends_are_answered(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """nats-py hands a subscription's messages to its callback one at a time: requests queued
    behind a slow one (here a collection) were dropped when the session unsubscribed, and
    their clients waited out their timeout."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    coordinator = Coordinator(coordinator_bus, name="c1", capacity=4)
    held = HeldCollection()
    coordinator.collector = cast(ArtifactCollector, held)

    async def collect() -> ControlReply:
        msg = await bus.nc.request(ctl_subject("gc"), encode(CollectArtifacts()), timeout=5)
        reply: ControlReply = decode(msg.data, ControlReply)
        return reply

    try:
        async with running_coordinator(coordinator):
            first = asyncio.create_task(collect())
            await asyncio.wait_for(held.started.wait(), 10)
            queued = [asyncio.create_task(collect()) for _ in range(5)]
            await bus.nc.flush()
            await coordinator_bus.nc.flush()  # they are in the coordinator's queue
            asyncio.get_running_loop().call_later(0.3, held.release.set)
        replies = await asyncio.gather(first, *queued, return_exceptions=True)
    finally:
        await coordinator_bus.close()

    assert not [reply for reply in replies if isinstance(reply, nats.errors.TimeoutError)]
    assert all(isinstance(reply, ArtifactsCollected) for reply in replies), replies


async def answer_to_a_request_done_before_its_step_failed(
    nats_server: EmbeddedNats, bus: Bus, run_id: str, verb: str, request: Envelope
) -> tuple[ControlReply, RunState]:
    """`request` (for run `run_id`, waiting for its plan's approval), asked through
    `ask_coordinator` while the step that applies it fails after its journal entry was stored
    (an event of the run's new state is lost): the change is made, the reply is `retry`."""
    coordinator_bus = await Bus.connect(nats_server.url, name="coordinator", topology=TEST_TOPOLOGY)
    fault = LosesEvents(coordinator_bus, b'"type":"RunStateChanged"', armed=False)
    coordinator_bus.pipeline = fault
    plan = [TaskSpec(id="x", title="x")]
    try:
        async with running_coordinator(Coordinator(coordinator_bus, name="c1", capacity=4)):
            await ask(
                bus, "submit", SubmitRun(run_id=run_id, goal="g", plan=plan, approve_plan=True)
            )
            if isinstance(request, Approve):
                listed = await ask(bus, "approvals", ListApprovals())
                assert isinstance(listed, ApprovalList)
                [question] = listed.approvals
                request = Approve(approval_id=question.approval_id, by="alice")
            fault.armed = True
            reply = await ask_coordinator(bus, verb, request, patience=30)
            run = await status(bus, run_id)
    finally:
        await coordinator_bus.close()
    assert fault.lost is not None
    return reply, run.state


async def test_an_approval_sent_again_after_it_was_stored_is_accepted(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """Sent again as told, it was refused: "already approved by alice", by alice herself."""
    request = Approve(approval_id="", by="alice")  # (the question's id is filled in)
    reply, state = await answer_to_a_request_done_before_its_step_failed(
        nats_server, bus, "p1", "approve", request
    )
    assert state is RunState.EXECUTING
    assert isinstance(reply, Accepted), reply


async def test_a_cancel_sent_again_after_it_was_stored_is_accepted(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    """Sent again as told, it was refused: "no open run", the run it had cancelled."""
    request = CancelRun(run_id="p2", reason="enough")
    reply, state = await answer_to_a_request_done_before_its_step_failed(
        nats_server, bus, "p2", "cancel", request
    )
    assert state is RunState.CANCELLED
    assert isinstance(reply, Accepted), reply
