"""JetStream streams, consumers, KV buckets and the object store of ARCHITECTURE.md.

`ensure_topology` is idempotent: the coordinator (and `codeyard up`) runs it at start, and a
changed setting (say a longer ack_wait) updates what exists instead of failing. The coordinator
creates plugin reviewers' consumers as runs need them (`codeyard.coordinator.reviewer_consumers`).
Workers only ever ensure their own consumer, and only when their grants allow it (with no
authentication, say: `codeyard.bus.permissions`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from codeyard.bus import subjects
from codeyard.bus.object_reader import stream_name
from codeyard.schemas.codec import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

DAY = 24 * 3600.0
# How long past the approval timeout a question stays in `cy_approvals`: the leader denies it
# within 30 s of the timeout, unless no coordinator leads then (an outage, an upgrade).
APPROVAL_TTL_MARGIN = DAY


class Topology(msgspec.Struct, kw_only=True, frozen=True):
    ack_wait: float = 30.0
    max_ack_pending: int = 10_000
    event_max_age: float = 30 * DAY
    event_max_bytes: int = 1024**3
    dedup_window: float = 120.0
    replicas: int = 1
    leader_ttl: float = 5.0
    approval_timeout: float = DAY  # the coordinator's: how long a question may stay unanswered

    def approvals_ttl(self) -> float:
        """How long `cy_approvals` keeps an entry: an answer as long as the events (the audit
        of what it allowed), and a question until well after it timed out: one expired unanswered
        would leave its run waiting for an answer nobody can give."""
        return max(self.event_max_age, self.approval_timeout + APPROVAL_TTL_MARGIN)


def _stream(
    topology: Topology, name: str, subject: str, retention: RetentionPolicy, **limits: Any
) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        num_replicas=topology.replicas,
        duplicate_window=min(topology.dedup_window, limits.get("max_age") or topology.dedup_window),
        max_msg_size=MAX_MESSAGE_BYTES,
        **limits,
    )


def _streams(topology: Topology) -> list[StreamConfig]:
    return [
        _stream(topology, subjects.WORK_STREAM, "cy.work.>", RetentionPolicy.WORK_QUEUE),
        _stream(topology, subjects.RESULT_STREAM, "cy.result.>", RetentionPolicy.WORK_QUEUE),
        # kept until the coordinator's next checkpoint of the run (coordinator/run_store.py)
        _stream(topology, subjects.JOURNAL_STREAM, "cy.journal.>", RetentionPolicy.LIMITS),
        _stream(
            topology,
            subjects.EVENT_STREAM,
            "cy.events.>",
            RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=topology.event_max_age,
            max_bytes=topology.event_max_bytes,
        ),
    ]


def work_consumer(role: str, topology: Topology) -> ConsumerConfig:
    # max_deliver stays unlimited on the server: the server would drop a message silently after
    # its limit, so workers enforce the limit themselves and answer with a WorkFailed result.
    name = subjects.consumer_name(role)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.work_subject(role),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=topology.ack_wait,
        max_deliver=-1,
        max_ack_pending=topology.max_ack_pending,
    )


def result_consumer(topology: Topology) -> ConsumerConfig:
    return ConsumerConfig(
        name=subjects.COORDINATOR_CONSUMER,
        durable_name=subjects.COORDINATOR_CONSUMER,
        filter_subject="cy.result.>",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=topology.ack_wait,
        max_deliver=-1,
        max_ack_pending=topology.max_ack_pending,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # exists with another configuration: bring it to ours
        await js.update_stream(config)


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig, *, update_ttl: bool) -> None:
    """Create the bucket, or with `update_ttl` bring the TTL of the existing one to ours (a
    bucket's other settings apply at its creation only)."""
    try:
        await js.key_value(config.bucket)
    except NotFoundError:
        await js.create_key_value(config)
        return
    if not update_ttl or not config.ttl:
        return
    stream = (await js.stream_info(f"KV_{config.bucket}")).config
    if stream.max_age is not None and abs(stream.max_age - config.ttl) < 1e-3:
        return
    log.info("bucket %s: TTL %ss -> %ss", config.bucket, stream.max_age, config.ttl)
    window = min(stream.duplicate_window or config.ttl, config.ttl)
    await js.update_stream(replace(stream, max_age=config.ttl, duplicate_window=window))


async def ensure_role_consumer(js: JetStreamContext, role: str, topology: Topology) -> None:
    # the server's CREATE without an action creates or updates
    await js.add_consumer(subjects.WORK_STREAM, work_consumer(role, topology))


async def ensure_topology(
    js: JetStreamContext,
    topology: Topology | None = None,
    roles: Iterable[str] = subjects.BUILTIN_ROLES,
) -> None:
    topology = topology or Topology()
    for stream in _streams(topology):
        await _ensure_stream(js, stream)
    for role in roles:
        await ensure_role_consumer(js, role, topology)
    await js.add_consumer(subjects.RESULT_STREAM, result_consumer(topology))
    for bucket, history, ttl in (
        (subjects.RUNS_BUCKET, 5, None),
        (subjects.APPROVALS_BUCKET, 5, topology.approvals_ttl()),
        (subjects.LEADER_BUCKET, 1, topology.leader_ttl),
    ):
        await _ensure_kv(
            js,
            KeyValueConfig(
                bucket=bucket,
                history=history,
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=topology.replicas,
            ),
            # The approvals' TTL follows the settings it derives from (events retention and
            # approval timeout, which may change); the lease's is set once (see README).
            update_ttl=bucket == subjects.APPROVALS_BUCKET,
        )
    await _ensure_object_store(js, subjects.ARTIFACTS_BUCKET, topology)
    log.debug("JetStream topology ensured")


async def _ensure_object_store(js: JetStreamContext, bucket: str, topology: Topology) -> None:
    """Create the bucket, and let it answer direct gets if it does not (made by another client,
    or a nats-py that did not set it): objects are read by direct gets only (`object_reader`)."""
    try:
        stream = (await js.stream_info(stream_name(bucket))).config
    except NotFoundError:
        config = ObjectStoreConfig(
            bucket=bucket, storage=StorageType.FILE, replicas=topology.replicas
        )
        await js.create_object_store(bucket, config=config)
        stream = (await js.stream_info(stream_name(bucket))).config
    if not stream.allow_direct:
        log.info("bucket %s: allowing direct gets", bucket)
        await js.update_stream(replace(stream, allow_direct=True))
