"""How a long-lived service process (coordinator, worker, gate, dashboard) runs Python: its
garbage collector's thresholds and its event loop.

Each message allocates a few dozen short-lived objects (parsed frames, futures, structs), so
with the default thresholds (700, 10, 10) the collector ran about every 20 messages and, every
hundredth time, walked every object the process holds (all open runs' tasks). In
`bench/coordinator_throughput.py` that was 6-7 % of the coordinator's and the workers' CPU; at
20,000 it is under 2 %, for a few MB more of young objects between collections. Full
collections still happen (the later thresholds are unchanged), so cyclic garbage is freed.

The event loop is uvloop by default (libuv: cheaper loop turns and socket calls; in the same
benchmark about 5 % less CPU per task in the coordinator and 8 % in the workers, and lower
dispatch latency); `CODEYARD_EVENT_LOOP=asyncio` runs the standard library's loop instead.

With CODEYARD_HEARTBEAT_FILE set the loop beats in that file (`codeyard.liveness`), and
SIGUSR1 writes every thread's stack to stderr: what a supervisor asks for before it kills a
service whose loop is stuck, to show where.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

from codeyard.liveness import beat

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]
YOUNG_THRESHOLD = 20_000


def tune_gc_for_service() -> None:
    """Call once the service's modules are imported: what exists then (modules, classes,
    configuration) lives as long as the process, so collections stop walking it."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def loop_factory(event_loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for `asyncio.Runner`: uvloop's loop, or None for the standard one."""
    if event_loop == "asyncio":
        return None
    import uvloop  # not on Windows, where only the standard loop runs

    return uvloop.new_event_loop


def run_service(
    main: Coroutine[Any, Any, T], event_loop: EventLoop = "uvloop", heartbeat: Path | None = None
) -> T:
    """`asyncio.run(main)` on the chosen event loop, beating in `heartbeat` if given."""
    if heartbeat is not None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        main = beating(main, heartbeat)
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)


async def beating(main: Coroutine[Any, Any, T], heartbeat: Path) -> T:
    pulse = asyncio.create_task(beat(heartbeat))
    try:
        return await main
    finally:
        pulse.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pulse
