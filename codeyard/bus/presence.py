"""Who is connected: workers announce themselves on `cy.presence.<role>` and `codeyard workers`
listens for a while.

Core NATS, not JetStream: presence is only worth something while it is fresh, so nothing is
stored, and an announcement nobody hears is no loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from nats.aio.msg import Msg

from codeyard.bus import subjects
from codeyard.bus.connection import Bus
from codeyard.schemas.codec import MessageError, decode, encode
from codeyard.schemas.envelope import new_id, utc_now
from codeyard.schemas.messages import WorkerPresence

log = logging.getLogger(__name__)

PRESENCE_PERIOD = 3.0
"""Seconds between two announcements of a worker."""
PRESENCE_TIMEOUT = 3 * PRESENCE_PERIOD
"""A worker whose last announcement is older than this is gone (crashed, or cut off)."""


class PresenceAnnouncer:
    """Announces one worker every `period` seconds from `start()` until `stop()`, which sends a
    last announcement marked `stopping`. `in_flight` is asked at each announcement."""

    def __init__(
        self,
        bus: Bus,
        role: str,
        concurrency: int,
        in_flight: Callable[[], int],
        period: float = PRESENCE_PERIOD,
    ) -> None:
        self._bus = bus
        self._subject = subjects.presence_subject(role)
        self._in_flight = in_flight
        self._period = period
        self._me = WorkerPresence(
            worker_id=new_id()[:16],
            role=role,
            pid=os.getpid(),
            host=socket.gethostname()[:200],
            concurrency=concurrency,
            started_at=utc_now(),
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        return self._me.worker_id

    def start(self) -> None:
        # a deployment configured before presence existed does not grant the subject: stay quiet
        if self._task is None and self._bus.may_publish(self._subject):
            self._task = asyncio.create_task(self._announce_forever())

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._announce(stopping=True)

    async def _announce_forever(self) -> None:
        while True:
            await self._announce()
            await asyncio.sleep(self._period)

    async def _announce(self, *, stopping: bool = False) -> None:
        presence = WorkerPresence(
            worker_id=self._me.worker_id,
            role=self._me.role,
            pid=self._me.pid,
            host=self._me.host,
            concurrency=self._me.concurrency,
            in_flight=self._in_flight(),
            started_at=self._me.started_at,
            stopping=stopping,
        )
        try:
            await self._bus.nc.publish(self._subject, encode(presence))
        except Exception as exc:  # presence is best effort: never stop the worker for it
            log.debug("presence announcement failed: %s", exc)


async def listen_for_workers(bus: Bus, window: float) -> list[WorkerPresence]:
    """The workers heard from within `window` seconds, one entry each (its latest), sorted by
    role and id; those that said they are stopping are left out."""
    latest: dict[str, WorkerPresence] = {}

    async def heard(msg: Msg) -> None:
        try:
            presence = decode(msg.data, WorkerPresence)
        except MessageError as exc:
            log.debug("ignoring a malformed announcement: %s", exc)
            return
        latest[presence.worker_id] = presence

    subscription = await bus.nc.subscribe(f"{subjects.PRESENCE_PREFIX}.>", cb=heard)
    try:
        await asyncio.sleep(window)
    finally:
        await subscription.unsubscribe()
    return present_workers(latest.values(), utc_now())


def present_workers(
    heard: Iterable[WorkerPresence], now: datetime, timeout: float = PRESENCE_TIMEOUT
) -> list[WorkerPresence]:
    """Of announcements (each worker's latest), those of workers still there at `now`."""
    oldest = now - timedelta(seconds=timeout)
    alive = [p for p in heard if not p.stopping and p.sent_at >= oldest]
    return sorted(alive, key=lambda presence: (presence.role, presence.worker_id))


async def unheard_roles(bus: Bus, roles: Iterable[str], window: float) -> list[str]:
    """Of `roles`, those no worker announced within `window` seconds (at least one period, to
    hear every worker there is): their work waits until a worker of theirs starts."""
    heard = {presence.role for presence in await listen_for_workers(bus, window)}
    return sorted(set(roles) - heard)
