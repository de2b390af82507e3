"""One leader at a time; a standby takes over when the leader stops renewing."""

from __future__ import annotations

import asyncio

from codeyard.bus import Bus
from codeyard.bus.service_key import ServiceKey
from codeyard.bus.subjects import LEADER_BUCKET
from codeyard.coordinator.lease import LEASE_KEY, LeaderLease
from codeyard.coordinator.service import Coordinator
from tests.coordinator.harness import running_coordinator


async def test_only_one_holder_and_takeover_after_ttl(bus: Bus) -> None:
    ttl = bus.topology.leader_ttl
    leader = await LeaderLease.open(bus.js, "coord-a")
    standby = await LeaderLease.open(bus.js, "coord-b")
    assert leader.ttl == ttl

    assert await leader.acquire()
    assert leader.held()
    assert not await standby.acquire()
    assert await standby.current_holder() == "coord-a"

    # the leader keeps renewing: the standby still cannot take over after a full TTL
    for _ in range(6):
        await asyncio.sleep(leader.renew_interval)
        assert await leader.renew()
        assert not await standby.acquire()

    # the leader dies (stops renewing): within the TTL plus a poll, the standby has the lease
    loop = asyncio.get_running_loop()
    died_at = loop.time()
    while not await standby.acquire():  # noqa: ASYNC110 - polling the lease is the standby's job
        await asyncio.sleep(standby.renew_interval)
    took = loop.time() - died_at
    assert took < ttl * 2.5, f"takeover took {took:.1f}s with ttl {ttl}s"
    assert standby.held()
    assert await standby.current_holder() == "coord-b"

    # the old leader wakes up: its renewal is refused and it knows it is no longer leader
    assert not await leader.renew()
    assert not leader.held()


async def test_release_hands_over_at_once(bus: Bus) -> None:
    leader = await LeaderLease.open(bus.js, "coord-a")
    standby = await LeaderLease.open(bus.js, "coord-b")
    assert await leader.acquire()
    await leader.release()
    assert not leader.held()
    assert await standby.acquire()


async def test_releasing_a_lease_that_expired_and_changed_hands_is_harmless(bus: Bus) -> None:
    old = await LeaderLease.open(bus.js, "coord-a")
    new = await LeaderLease.open(bus.js, "coord-b")
    assert await old.acquire()
    while await new.current_holder() is not None:  # noqa: ASYNC110 - waiting out the TTL
        await asyncio.sleep(0.1)
    assert await new.acquire()

    await old.release()  # the server refuses the delete: its revision is not the key's
    assert await new.current_holder() == "coord-b"
    assert await new.renew()


async def test_a_coordinator_that_lost_its_lease_leads_again_once_it_is_free(bus: Bus) -> None:
    """Losing the lease ends the leadership session cleanly (every loop of it stops), and the
    coordinator goes back to contending: after a NATS restart it is the one that takes over."""
    async with running_coordinator(
        Coordinator(bus, name="coord-relead", capacity=4)
    ) as coordinator:
        kv = await bus.js.key_value(LEADER_BUCKET)
        await kv.delete(LEASE_KEY)
        thief = await LeaderLease.open(bus.js, "coord-thief")
        assert await thief.acquire()
        for _ in range(100):  # its next renewal finds the lease taken
            if not coordinator.leading.is_set():
                break
            await asyncio.sleep(0.1)
        assert not coordinator.leading.is_set()

        await thief.release()
        await asyncio.wait_for(coordinator.leading.wait(), 10)
        assert await thief.current_holder() == "coord-relead"


async def test_with_the_service_key_a_holder_takes_its_lease_back_from_a_replayed_record(
    bus: Bus,
) -> None:
    """A worker can have JetStream replay stored bytes onto the lease's key: without the key,
    the leader took that for another coordinator's and stopped leading, for as long as it
    went on; a standby could not lead either."""
    key = ServiceKey("k" * 43)
    kv = await bus.js.key_value(LEADER_BUCKET)
    leader = await LeaderLease.open(bus.js, "coord-a", key)
    standby = await LeaderLease.open(bus.js, "coord-b", key)
    assert await leader.acquire()
    await kv.put(LEASE_KEY, b'{"type":"CodeRequest"}')  # as a replay lands: no revision check
    assert not await standby.acquire()  # the leader may be alive: a standby waits
    assert await leader.renew()
    assert leader.held()
    assert await standby.current_holder() == "coord-a"

    # a record a coordinator sealed is another's lease: not taken back
    await kv.put(LEASE_KEY, f"coord-c\n{key.lease_seal('coord-c')}".encode())
    assert not await leader.renew()
    assert not leader.held()


async def test_without_the_service_key_a_replayed_record_takes_the_lease(bus: Bus) -> None:
    kv = await bus.js.key_value(LEADER_BUCKET)
    leader = await LeaderLease.open(bus.js, "coord-a")
    assert await leader.acquire()
    await kv.put(LEASE_KEY, b"anything")
    assert not await leader.renew()
