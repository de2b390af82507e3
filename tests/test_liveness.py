"""A service's heartbeat file, and the check that reads it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from codeyard.liveness import HUNG_AFTER, beat, main, silent_for, touch


def test_a_file_never_touched_counts_as_alive(tmp_path: Path) -> None:
    """The service may still be starting, or not be one of codeyard's."""
    assert silent_for(tmp_path / "heartbeat") is None
    assert main([str(tmp_path / "heartbeat")]) == 0


def test_a_silence_longer_than_the_limit_is_a_stuck_loop(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    touch(heartbeat)
    assert main([str(heartbeat)]) == 0
    long_ago = time.time() - HUNG_AFTER - 5
    os.utime(heartbeat, (long_ago, long_ago))
    silence = silent_for(heartbeat)
    assert silence is not None
    assert silence > HUNG_AFTER
    assert main([str(heartbeat)]) == 1
    assert main([str(heartbeat), str(HUNG_AFTER * 2)]) == 0  # a longer limit given


def test_the_loop_renews_the_file_as_it_turns(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"

    async def run_a_while() -> None:
        pulse = asyncio.create_task(beat(heartbeat, interval=0.05))
        await asyncio.sleep(0.1)
        long_ago = time.time() - 1000
        os.utime(heartbeat, (long_ago, long_ago))
        await asyncio.sleep(0.2)  # a few beats
        pulse.cancel()

    asyncio.run(run_a_while())
    silence = silent_for(heartbeat)
    assert silence is not None
    assert silence < 100


def test_the_check_runs_as_a_module_with_the_file_from_the_environment(tmp_path: Path) -> None:
    """As the image's HEALTHCHECK and the Kubernetes probes run it."""
    heartbeat = tmp_path / "heartbeat"
    touch(heartbeat)
    long_ago = time.time() - HUNG_AFTER - 5
    os.utime(heartbeat, (long_ago, long_ago))
    env = os.environ | {"CODEYARD_HEARTBEAT_FILE": str(heartbeat)}
    check = [sys.executable, "-m", "codeyard.liveness"]
    stuck = subprocess.run(check, env=env, capture_output=True, text=True, check=False)
    assert stuck.returncode == 1
    assert "no sign of life for" in stuck.stdout
    touch(heartbeat)
    assert subprocess.run(check, env=env, check=False).returncode == 0
    unset = os.environ.copy()
    unset.pop("CODEYARD_HEARTBEAT_FILE", None)
    usage = subprocess.run(check, env=unset, capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert "usage:" in usage.stdout
