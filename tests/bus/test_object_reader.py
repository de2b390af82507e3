"""Objects read by direct gets only, from a real nats-server's object store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import ObjectNotFoundError
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.js.object_store import ObjectStore

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.object_reader import ObjectReader, UnreadableObject, meta_subject
from codeyard.bus.subjects import ARTIFACTS_BUCKET
from codeyard.workspace.snapshots import artifact_store

CHUNK = 1000
DATA = random.Random(3).randbytes(10 * CHUNK + 500)  # 11 chunks, the last one short


@pytest.fixture
async def store(bus: Bus) -> ObjectStore:
    return await artifact_store(bus.js)


@pytest.fixture
def reader(bus: Bus) -> ObjectReader:
    return ObjectReader(bus.js, ARTIFACTS_BUCKET)


async def put(store: ObjectStore, name: str, data: bytes) -> None:
    """`data` stored in chunks of CHUNK bytes."""
    options = ObjectMetaOptions(max_chunk_size=CHUNK)
    await store.put(name, data, ObjectMeta(name=name, options=options))


async def republish_info(bus: Bus, name: str, **changes: object) -> None:
    """Rewrite object `name`'s info as a damaged or hostile writer could."""
    subject = meta_subject(ARTIFACTS_BUCKET, name)
    last = await bus.js.get_last_msg(f"OBJ_{ARTIFACTS_BUCKET}", subject)
    info = json.loads(last.data or b"{}") | changes
    rollup = {"Nats-Rollup": MSG_ROLLUP_SUBJECT}
    await bus.js.publish(subject, json.dumps(info).encode(), headers=rollup)


async def test_a_multi_chunk_object_reads_back_whole(
    store: ObjectStore, reader: ObjectReader
) -> None:
    await put(store, "big", DATA)
    assert (await reader.info("big")).chunks == 11
    assert await reader.read("big") == DATA


async def test_chunks_interleaved_with_another_objects_are_told_apart(
    store: ObjectStore, reader: ObjectReader
) -> None:
    other = bytes(reversed(DATA))
    await asyncio.gather(put(store, "one", DATA), put(store, "other", other))
    assert await reader.read("one") == DATA
    assert await reader.read("other") == other


async def test_an_empty_object_is_empty(store: ObjectStore, reader: ObjectReader) -> None:
    await store.put("empty", b"")
    assert (await reader.info("empty")).chunks == 0
    assert await reader.read("empty") == b""


async def test_a_missing_or_deleted_object_is_not_found(
    store: ObjectStore, reader: ObjectReader
) -> None:
    with pytest.raises(ObjectNotFoundError):
        await reader.read("never-stored")
    await put(store, "gone", DATA)
    await store.delete("gone")
    with pytest.raises(ObjectNotFoundError):
        await reader.read("gone")
    with pytest.raises(ObjectNotFoundError):
        await reader.info("gone")


async def test_a_replaced_object_reads_as_its_new_bytes(
    store: ObjectStore, reader: ObjectReader
) -> None:
    await put(store, "replaced", DATA)
    first = (await reader.info("replaced")).nuid
    await put(store, "replaced", b"shorter, newer")
    info = await reader.info("replaced")
    assert info.nuid != first
    assert await reader.read("replaced") == b"shorter, newer"


async def test_a_digest_that_does_not_match_is_an_error(
    bus: Bus, store: ObjectStore, reader: ObjectReader
) -> None:
    await put(store, "forged", DATA)
    other = base64.urlsafe_b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    await republish_info(bus, "forged", digest=f"SHA-256={other}")
    with pytest.raises(UnreadableObject, match="do not match its digest"):
        await reader.read("forged")


async def test_a_missing_chunk_or_a_wrong_size_is_an_error(
    bus: Bus, store: ObjectStore, reader: ObjectReader
) -> None:
    await put(store, "short", DATA)
    await republish_info(bus, "short", chunks=12)
    with pytest.raises(UnreadableObject, match="chunk 12 of 12 is missing"):
        await reader.read("short")
    await put(store, "sized", DATA)
    await republish_info(bus, "sized", size=len(DATA) + 1)
    with pytest.raises(UnreadableObject, match=f"{len(DATA)} bytes in 11 chunks, expected"):
        await reader.read("sized")
    await put(store, "overflowing", DATA)
    await republish_info(bus, "overflowing", size=CHUNK)
    with pytest.raises(UnreadableObject, match="more than its 1000 bytes"):
        await reader.read("overflowing")


async def test_an_object_is_written_into_a_file(
    store: ObjectStore, reader: ObjectReader, tmp_path: Path
) -> None:
    await put(store, "to-disk", DATA)
    path = tmp_path / "object"
    with path.open("wb") as file:
        info = await reader.read_into("to-disk", file)
    assert info.size == len(DATA)
    assert path.read_bytes() == DATA
    buffer = io.BytesIO()
    await ObjectReader.of(store).read_into("to-disk", buffer)
    assert buffer.getvalue() == DATA


@pytest.fixture
async def watched(nats_server: EmbeddedNats) -> AsyncIterator[list[str]]:
    """Every subject published to on the server but replies to inboxes, as they arrive."""
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        if not msg.subject.startswith("_INBOX."):
            seen.append(msg.subject)

    nc = await nats.connect(nats_server.url)
    await nc.subscribe(">", cb=record)
    await nc.flush()
    yield seen
    await nc.close()


async def test_reading_asks_for_direct_gets_only(
    bus: Bus, store: ObjectStore, reader: ObjectReader, watched: list[str]
) -> None:
    # these two subjects are all an account needs to read objects (see object_reader)
    await put(store, "watched", DATA)
    await bus.nc.flush()
    await asyncio.sleep(0.2)
    watched.clear()
    assert await reader.read("watched") == DATA
    await bus.nc.flush()
    await asyncio.sleep(0.2)
    stream = f"OBJ_{ARTIFACTS_BUCKET}"
    info = f"$JS.API.DIRECT.GET.{stream}.{meta_subject(ARTIFACTS_BUCKET, 'watched')}"
    assert watched == [info] + [f"$JS.API.DIRECT.GET.{stream}"] * 11
