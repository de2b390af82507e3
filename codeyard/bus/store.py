"""Typed access to a JetStream KV bucket with optimistic concurrency (revision checks)."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from codeyard.bus.kv_scan import latest_entries
from codeyard.schemas.codec import decode, encode

T = TypeVar("T", bound=msgspec.Struct)

# JetStream's error codes for a write whose expected last revision is not the key's
WRONG_LAST_SEQUENCE = (10071, 10164)
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"  # 0: none yet


class StaleRevision(RuntimeError):
    """Someone else wrote the key since you read it: re-read, re-apply, retry."""

    def __init__(self, bucket: str, key: str, expected: int) -> None:
        self.key = key
        self.expected = expected
        super().__init__(f"{bucket}/{key} changed since revision {expected}")


class Versioned(msgspec.Struct, Generic[T], frozen=True):
    value: T
    revision: int


class VersionedStore(Generic[T]):
    """Values of one msgspec type in one bucket. Every write names the revision it replaces."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, type_: type[T]) -> None:
        self._js = js
        self._kv = kv
        self.bucket = bucket
        self._type = type_

    async def get(self, key: str) -> Versioned[T] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Versioned(decode(entry.value, self._type), entry.revision)

    async def put(self, key: str, value: T) -> int:
        """Write regardless of what is there (for values whose writers never race)."""
        return await self._kv.put(key, encode(value))

    async def create(self, key: str, value: T) -> int:
        """Write a new key; `StaleRevision` if it exists already."""
        try:
            return await self._kv.create(key, encode(value))
        except KeyWrongLastSequenceError:
            raise StaleRevision(self.bucket, key, 0) from None

    async def update(self, key: str, value: T, revision: int) -> int:
        """Replace the value read at `revision`; `StaleRevision` if it has moved on."""
        try:
            return await self._kv.update(key, encode(value), last=revision)
        except KeyWrongLastSequenceError:
            raise StaleRevision(self.bucket, key, revision) from None

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)

    async def keys(self) -> list[str]:
        return [key async for key, _, _ in latest_entries(self._js, self.bucket)]

    async def values(self) -> list[T]:
        """Every key's latest value (one scan, not a get per key)."""
        entries = latest_entries(self._js, self.bucket)
        return [decode(value, self._type) async for _, value, _ in entries]
