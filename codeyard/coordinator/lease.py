"""Leader lease in the `cy_leader` KV bucket: exactly one active coordinator.

The bucket's TTL makes an unrenewed lease vanish, so a standby can take it. Every renewal is a
revision-checked update: a leader that was paused past the TTL finds its revision gone and
learns it lost the lease instead of overwriting the new leader's. Between renewals the lease is
trusted only until `renewed_at + ttl * safety`, by the local monotonic clock, so a process that
wakes from a long pause stops acting before it can touch the bus.

With the service key, the record is sealed: a worker can have JetStream replay stored bytes
onto the lease's key (see `codeyard.bus.service_key`), which took the lease from its leader
for as long as it went on. A holder whose renewal finds, over its own, a record no coordinator
sealed writes its own again. A standby never takes a lease so: the leader may be alive.
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from codeyard.bus import subjects
from codeyard.bus.service_key import ServiceKey
from codeyard.bus.store import WRONG_LAST_SEQUENCE

log = logging.getLogger(__name__)

LEASE_KEY = "coordinator"
# Enough for a deletion on a loaded machine; a lease not released in time expires by its TTL.
RELEASE_PATIENCE = 1.0


class LeaderLease:
    def __init__(
        self,
        kv: KeyValue,
        holder: str,
        ttl: float,
        safety: float = 0.6,
        service_key: ServiceKey | None = None,
    ) -> None:
        self._kv = kv
        self.holder = holder
        self._key = service_key
        self._record = (
            f"{holder}\n{service_key.lease_seal(holder)}" if service_key else holder
        ).encode()
        self.ttl = ttl
        self._trust = ttl * safety
        self._revision = 0
        self._renewed_at = float("-inf")

    @classmethod
    async def open(
        cls, js: JetStreamContext, holder: str, service_key: ServiceKey | None = None
    ) -> LeaderLease:
        """The lease's TTL is the bucket's, whoever created it: every contender must agree."""
        kv = await js.key_value(subjects.LEADER_BUCKET)
        status = await kv.status()
        if not status.ttl:
            raise ValueError(f"bucket {subjects.LEADER_BUCKET} has no TTL; a lease needs one")
        return cls(kv, holder, status.ttl, service_key=service_key)

    @property
    def renew_interval(self) -> float:
        return self.ttl / 4

    def held(self) -> bool:
        """True while the last successful renewal is recent enough to act on."""
        return self._revision > 0 and time.monotonic() - self._renewed_at < self._trust

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it. Never steals a live lease."""
        started = time.monotonic()
        try:
            self._revision = await self._kv.create(LEASE_KEY, self._record)
        except KeyWrongLastSequenceError:
            return False
        self._renewed_at = started
        log.info("%s acquired the coordinator lease", self.holder)
        return True

    async def renew(self) -> bool:
        """Extend the lease; False (and no longer held) if another holder has it now."""
        if not self._revision:
            return False
        started = time.monotonic()
        try:
            self._revision = await self._kv.update(LEASE_KEY, self._record, last=self._revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            if await self._take_back():
                self._renewed_at = started
                return True
            log.warning("%s lost the coordinator lease", self.holder)
            self._revision = 0
            return False
        self._renewed_at = started
        return True

    async def _take_back(self) -> bool:
        """Write the record again over one no coordinator sealed; False if there is none, or
        a coordinator's (or the record changed again meanwhile)."""
        if self._key is None:
            return False
        try:
            entry = await self._kv.get(LEASE_KEY)
        except KeyNotFoundError:
            return False
        if entry.revision is None or self._sealed(entry.value or b""):
            return False
        try:
            self._revision = await self._kv.update(LEASE_KEY, self._record, last=entry.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False
        log.warning(
            "%s took the coordinator lease back: its record had been overwritten by a message "
            "no coordinator sealed",
            self.holder,
        )
        return True

    def _sealed(self, record: bytes) -> bool:
        seal = record.decode(errors="replace").partition("\n")[2]
        return self._key is not None and self._key.seals_lease(holder_of(record), seal)

    async def release(self, patience: float = RELEASE_PATIENCE) -> None:
        """Give the lease up at once so a standby need not wait for the TTL; unless NATS does
        not answer within `patience` seconds: a stopping process must not hang on the bus,
        and the lease then expires by its TTL."""
        if not self._revision:
            return
        revision, self._revision = self._revision, 0
        try:
            async with asyncio.timeout(patience):
                await self._kv.delete(LEASE_KEY, last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            pass  # expired already, perhaps taken by another: not ours to delete
        except (nats.errors.Error, TimeoutError) as exc:
            # nats-py's delete does not translate "wrong last sequence" as update does
            if isinstance(exc, APIError) and exc.err_code in WRONG_LAST_SEQUENCE:
                return
            log.warning(
                "%s could not release the coordinator lease (%s): it expires by its TTL (%g s)",
                self.holder,
                str(exc) or "no answer from NATS",
                self.ttl,
            )

    async def current_holder(self) -> str | None:
        try:
            entry = await self._kv.get(LEASE_KEY)
        except KeyNotFoundError:
            return None
        return holder_of(entry.value) if entry.value else None


def holder_of(record: bytes) -> str:
    """Who a lease's record names (its first line: a seal may follow)."""
    return record.decode(errors="replace").partition("\n")[0]
