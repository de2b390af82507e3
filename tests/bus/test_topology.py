"""Every process sets up the topology at start; doing it again, or with new settings, is safe."""

from __future__ import annotations

from dataclasses import replace

import nats.errors
import pytest

from codeyard.bus import Bus, Topology, ensure_topology
from codeyard.bus.object_reader import ObjectReader
from codeyard.bus.subjects import (
    APPROVALS_BUCKET,
    ARTIFACTS_BUCKET,
    EVENT_STREAM,
    LEADER_BUCKET,
    RESULT_STREAM,
    RUNS_BUCKET,
    WORK_STREAM,
)
from codeyard.bus.topology import APPROVAL_TTL_MARGIN, DAY
from codeyard.workspace.snapshots import artifact_store


async def test_setup_is_idempotent_and_creates_everything(bus: Bus) -> None:
    await bus.setup()
    await bus.setup(roles=["coder", "review.security"])
    streams = {s.config.name for s in await bus.js.streams_info()}
    assert {WORK_STREAM, RESULT_STREAM, EVENT_STREAM} <= streams
    for bucket in (RUNS_BUCKET, APPROVALS_BUCKET, LEADER_BUCKET):
        status = await (await bus.js.key_value(bucket)).status()
        assert status.bucket == bucket
    leader = await (await bus.js.key_value(LEADER_BUCKET)).status()
    assert leader.ttl == bus.topology.leader_ttl  # the lease expires unless renewed
    await bus.js.object_store(ARTIFACTS_BUCKET)
    consumers = {c.name for c in await bus.js.consumers_info(WORK_STREAM)}
    assert consumers == {"planner", "coder", "tester", "review", "review-security"}
    [coordinator] = await bus.js.consumers_info(RESULT_STREAM)
    assert coordinator.name == "coordinator"
    assert coordinator.config.filter_subject == "cy.result.>"


async def test_changed_settings_update_what_exists(bus: Bus) -> None:
    await ensure_topology(bus.js, Topology(ack_wait=7.0, event_max_age=3600.0))
    coder = await bus.js.consumer_info(WORK_STREAM, "coder")
    assert coder.config.ack_wait == 7.0
    assert coder.config.max_deliver == -1  # workers enforce the limit, see PullWorker
    events = await bus.js.stream_info(EVENT_STREAM)
    assert events.config.max_age == 3600.0


async def test_approvals_outlive_their_timeout_however_short_the_event_retention(bus: Bus) -> None:
    approvals = await bus.js.key_value(APPROVALS_BUCKET)
    assert (await approvals.status()).ttl == bus.topology.event_max_age  # answers: as the events
    # a question nobody answers is denied after the approval timeout: it must still be there
    await ensure_topology(bus.js, Topology(event_max_age=60.0, approval_timeout=3 * DAY))
    assert (await approvals.status()).ttl == 3 * DAY + APPROVAL_TTL_MARGIN
    await ensure_topology(bus.js, Topology(event_max_age=60 * DAY, approval_timeout=3 * DAY))
    assert (await approvals.status()).ttl == 60 * DAY
    await approvals.put("still-there", b"{}")  # the bucket still works as one
    assert (await approvals.get("still-there")).value == b"{}"


async def test_the_artifacts_bucket_answers_direct_gets_even_when_made_without(bus: Bus) -> None:
    # objects are read by direct gets only (object_reader): a bucket made before, or by another
    # client, without them is given them
    stream = f"OBJ_{ARTIFACTS_BUCKET}"
    made = (await bus.js.stream_info(stream)).config
    assert made.allow_direct
    await (await artifact_store(bus.js)).put("kept", b"stored before the update")
    await bus.js.update_stream(replace(made, allow_direct=False))
    reader = ObjectReader(bus.js, ARTIFACTS_BUCKET)
    with pytest.raises(nats.errors.NoRespondersError):
        await reader.read("kept")

    await ensure_topology(bus.js, bus.topology)
    updated = (await bus.js.stream_info(stream)).config
    assert updated.allow_direct
    assert await reader.read("kept") == b"stored before the update"
    await ensure_topology(bus.js, bus.topology)
    assert (await bus.js.stream_info(stream)).config == updated  # nothing more to change
