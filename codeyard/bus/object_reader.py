"""Reading one object of a JetStream object store by direct gets only.

nats-py's `ObjectStore.get` reads the chunks through an ordered push consumer whose delivery
subject the client picks. Deliveries cannot cross NATS accounts (each worker has its own), and
a subject of the client's choosing lets it have the server publish stored bytes onto any
subject. A direct get is a request whose answer comes to the requester's own inbox, so reading
object `name` of bucket `b` (stream `OBJ_b`) publishes only to:

    $JS.API.DIRECT.GET.OBJ_b.$O.b.M.<urlsafe base64 of name>   its info: the last message there
    $JS.API.DIRECT.GET.OBJ_b                                   each chunk: {"seq", "next_by_subj"}

(`$JS.API` being the JetStream context's prefix). The stream must allow direct gets
(`allow_direct`, which `codeyard.bus.topology` makes sure of). Links to other objects are not
followed: that would read from other buckets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

DIGEST_PREFIX = "SHA-256="


class UnreadableObject(RuntimeError):
    """The object is listed but cannot be read whole: a chunk is missing, the bytes do not
    match its size or digest, or its info is not an object's."""


def stream_name(bucket: str) -> str:
    return f"OBJ_{bucket}"


def meta_subject(bucket: str, name: str) -> str:
    # the object store's own naming of an object's info subject
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


class ObjectReader:
    """Objects of `bucket`, read by direct gets through `js`."""

    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = stream_name(bucket)

    @classmethod
    def of(cls, store: ObjectStore) -> ObjectReader:
        # nats-py's ObjectStore does not expose its context and bucket publicly
        return cls(store._js, store._name)

    async def info(self, name: str) -> ObjectInfo:
        """The info of live object `name`; `ObjectNotFoundError` when absent or deleted."""
        subject = meta_subject(self.bucket, name)
        try:
            msg = await self.js.get_last_msg(self.stream, subject, direct=True)
        except NotFoundError:
            raise ObjectNotFoundError(description=f"{name} is not in {self.bucket}") from None
        if not msg.data:
            raise ObjectNotFoundError(description=f"{name} has no info in {self.bucket}")
        try:
            info: ObjectInfo = ObjectInfo.from_response(json.loads(msg.data))
        except (ValueError, TypeError) as exc:
            raise UnreadableObject(f"{name} in {self.bucket} has unreadable info: {exc}") from exc
        if info.deleted:
            raise ObjectNotFoundError(description=f"{name} was deleted from {self.bucket}")
        return info

    async def read(self, name: str) -> bytes:
        """The whole of object `name`, in memory: for small objects."""
        info = await self.info(name)
        return b"".join([chunk async for chunk in self._chunks(name, info)])

    async def read_into(self, name: str, file: io.BufferedIOBase) -> ObjectInfo:
        """Write object `name` into `file` chunk by chunk (in a thread each), never holding
        more than one chunk. On `UnreadableObject` the file holds what arrived before."""
        info = await self.info(name)
        async for chunk in self._chunks(name, info):
            await asyncio.to_thread(file.write, chunk)
        return info

    async def _chunks(self, name: str, info: ObjectInfo) -> AsyncIterator[bytes]:
        """The object's chunks in order, then (before the iteration ends) the check that
        together they are its size and digest."""
        if info.is_link():
            raise UnreadableObject(f"{name} in {self.bucket} is a link, which is not followed")
        expected = _digest(name, info)
        size, count = info.size or 0, info.chunks or 0
        if count and not info.nuid:
            raise UnreadableObject(f"{name} in {self.bucket} has chunks but no nuid")
        subject = chunk_subject(self.bucket, info.nuid)
        sha256 = hashlib.sha256()
        received = 0
        seq = 1  # the first sequence of any stream
        for index in range(count):
            try:
                msg = await self.js.get_msg(
                    self.stream, seq=seq, subject=subject, direct=True, next=True
                )
            except NotFoundError:
                raise UnreadableObject(
                    f"{name} in {self.bucket}: chunk {index + 1} of {count} is missing "
                    f"({received} of {size} bytes read)"
                ) from None
            if msg.subject != subject or msg.seq is None or msg.seq < seq:
                raise UnreadableObject(f"{name} in {self.bucket}: the server sent another chunk")
            data = msg.data or b""
            received += len(data)
            if received > size:  # stop before writing more than the object holds
                raise UnreadableObject(
                    f"{name} in {self.bucket}: chunks hold more than its {size} bytes"
                )
            sha256.update(data)
            seq = msg.seq + 1
            yield data
        if received != size:
            raise UnreadableObject(
                f"{name} in {self.bucket}: {received} bytes in {count} chunks, expected {size}"
            )
        if sha256.digest() != expected:
            raise UnreadableObject(f"{name} in {self.bucket}: the bytes do not match its digest")


def _digest(name: str, info: ObjectInfo) -> bytes:
    """The sha256 `info` records (`SHA-256=<urlsafe base64>`, padded or not)."""
    text = info.digest or ""
    if not text.upper().startswith(DIGEST_PREFIX):
        raise UnreadableObject(f"{name} has no sha256 digest in its info ({text!r})")
    encoded = text[len(DIGEST_PREFIX) :]
    try:
        digest = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise UnreadableObject(f"{name} has an unreadable digest {text!r}") from exc
    if len(digest) != hashlib.sha256().digest_size:
        raise UnreadableObject(f"{name} has a digest of {len(digest)} bytes, not a sha256")
    return digest
