"""Reading the latest value of many keys of a KV bucket at once.

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
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

DELETION_HEADERS = {"KV-Operation", "Nats-Marker-Reason"}  # deletes, purges, expiries
BATCH = 1000


async def latest_entries(
    js: JetStreamContext, bucket: str, keys: str = ">"
) -> AsyncIterator[tuple[str, bytes, int]]:
    """(key, value, revision) of every live key of `bucket` matching the pattern `keys`."""
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    info = await js.add_consumer(
        stream,
        config=ConsumerConfig(
            name=f"scan-{uuid.uuid4().hex}",
            filter_subject=prefix + keys,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=60.0,
        ),
    )
    remaining = info.num_pending or 0
    reader = await js.pull_subscribe_bind(stream=stream, name=info.name)
    try:
        while remaining > 0:
            for msg in await reader.fetch(min(remaining, BATCH), timeout=30):
                remaining = msg.metadata.num_pending
                if not msg.headers or not DELETION_HEADERS & msg.headers.keys():
                    yield msg.subject[len(prefix) :], msg.data, msg.metadata.sequence.stream
    finally:
        await reader.unsubscribe()
        with contextlib.suppress(nats.errors.Error):  # it expires by itself when idle
            await js.delete_consumer(stream, info.name)
