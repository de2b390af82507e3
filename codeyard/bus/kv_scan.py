"""Reading many messages of a stream at once: the latest value of many keys of a KV bucket,
or the messages of a subject after a sequence.

Not `KeyValue.watch` (nor `KeyValue.keys`, built on it): its end-of-initial-values marker comes
from a consumer info that races the push deliveries, and on a slow machine it can say "nothing"
before the values arrive (a coordinator once resumed a run with no tasks that way). A pull
consumer delivers nothing until asked, so the pending count its creation reports is exact.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

DELETION_HEADERS = {"KV-Operation", "Nats-Marker-Reason"}  # deletes, purges, expiries
BATCH = 1000


async def latest_entries(
    js: JetStreamContext, bucket: str, keys: str = ">"
) -> AsyncIterator[tuple[str, bytes, int]]:
    """(key, value, revision) of every live key of `bucket` matching the pattern `keys`."""
    prefix = f"$KV.{bucket}."
    deliver = ConsumerConfig(
        filter_subject=prefix + keys, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
    )
    async for msg in _scan(js, f"KV_{bucket}", deliver):
        if not msg.headers or not DELETION_HEADERS & msg.headers.keys():
            yield msg.subject[len(prefix) :], msg.data, msg.metadata.sequence.stream


async def messages_after(
    js: JetStreamContext, stream: str, subject: str, sequence: int
) -> AsyncIterator[tuple[int, bytes]]:
    """(sequence, payload) of every message of `stream` on `subject` after `sequence`."""
    deliver = ConsumerConfig(
        filter_subject=subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=sequence + 1,
    )
    async for msg in _scan(js, stream, deliver):
        yield msg.metadata.sequence.stream, msg.data


async def _scan(js: JetStreamContext, stream: str, deliver: ConsumerConfig) -> AsyncIterator[Msg]:
    """The messages `deliver` (a filter and deliver policy) selects, through a pull consumer."""
    deliver.name = f"scan-{uuid.uuid4().hex}"
    deliver.ack_policy = AckPolicy.NONE
    deliver.mem_storage = True
    deliver.inactive_threshold = 60.0
    info = await js.add_consumer(stream, config=deliver)
    remaining = info.num_pending or 0
    reader = await js.pull_subscribe_bind(stream=stream, name=info.name)
    try:
        while remaining > 0:
            for msg in await reader.fetch(min(remaining, BATCH), timeout=30):
                remaining = msg.metadata.num_pending
                yield msg
    finally:
        await reader.unsubscribe()
        with contextlib.suppress(nats.errors.Error):  # it expires by itself when idle
            await js.delete_consumer(stream, info.name)
