"""A service's sign of life, for whoever supervises it: a file whose time its event loop renews.

A service whose event loop is stuck (a call that blocks it for ever, a deadlock in a C
extension) does not exit, so nothing restarted it: a coordinator stuck so under `codeyard up`
stalled every run. With CODEYARD_HEARTBEAT_FILE set, `codeyard.service_runtime` has the loop
touch that file every `BEAT` seconds; `codeyard up` (`codeyard.supervisor`) kills and restarts
a service silent for `HUNG_AFTER` seconds, and in a container `python -m codeyard.liveness`
is the health check (the Dockerfile's, the Kubernetes liveness probe).

Only a loop that does not turn is caught; one that turns but waits for ever on something is
not. A file never touched (the service still starting, or not one of codeyard's) counts as
alive: only a silence after a first beat says the loop stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

HEARTBEAT_ENV = "CODEYARD_HEARTBEAT_FILE"
BEAT = 2.0
# Far beyond any pause of a loop that turns (a full garbage collection, a run of 10,000 tasks
# decoded at once take seconds), and short enough that a stuck coordinator is replaced soon.
HUNG_AFTER = 60.0


def touch(path: Path) -> None:
    """Renew the file's time (creating it); a file that cannot be written is no reason to stop
    the service, which then merely counts as alive."""
    with contextlib.suppress(OSError):
        path.touch()


async def beat(path: Path, interval: float = BEAT) -> None:
    """Touch `path` every `interval` seconds, for ever (cancel to stop)."""
    while True:
        touch(path)
        await asyncio.sleep(interval)


def beat_time(path: Path) -> float | None:
    """When the last beat was (the file's time), or None if there was none."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def silent_for(path: Path) -> float | None:
    """Seconds since the last beat by the wall clock, or None if there was none."""
    last = beat_time(path)
    return None if last is None else max(0.0, time.time() - last)


def main(argv: list[str]) -> int:
    """`python -m codeyard.liveness [FILE [SECONDS]]`: exit 1 if the service beating in FILE
    (default: $CODEYARD_HEARTBEAT_FILE) has been silent for more than SECONDS (HUNG_AFTER)."""
    name = argv[0] if argv else os.environ.get(HEARTBEAT_ENV, "")
    if not name:
        print(f"usage: python -m codeyard.liveness FILE [SECONDS] (or set {HEARTBEAT_ENV})")
        return 2
    limit = float(argv[1]) if len(argv) > 1 else HUNG_AFTER
    silence = silent_for(Path(name))
    if silence is not None and silence > limit:
        print(f"no sign of life for {silence:.0f} s (its event loop is stuck)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
