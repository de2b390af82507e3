"""Snapshots of a large repository through the object store: time and memory.

    python -m bench.snapshot_large_repo [--files 10000] [--mb 200] [--runs 3]

Builds a repository of `--files` files totalling `--mb` MB of random (incompressible) bytes, so
the bundle really is that large, packed as a clone would be. A real nats-server (file store)
runs as a child process. Each run times: publishing the full snapshot (bundle + upload), a
checkout from a cold cache (download + import + working tree), a checkout from the warm cache,
publishing an incremental snapshot after a one-file commit, checking that out from the warm
cache, and publishing the same head again (deduplicated). Figures are medians over the runs;
the baselines, measured in the same invocation, are a local `git clone --no-hardlinks` and a
`cp -r` of the repository. Peak RSS shows the repository never sits in this process's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from codeyard.bus import Bus, EmbeddedNats
from codeyard.workspace.git import git
from codeyard.workspace.snapshot_cache import SnapshotCache
from codeyard.workspace.snapshots import artifact_store, publish_snapshot

T = TypeVar("T")
MB = 1024 * 1024
FILES_PER_DIR = 100


def make_repo(repo: Path, files: int, total_bytes: int) -> None:
    """Files written one at a time from os.urandom, then committed and packed."""
    size = total_bytes // files
    repo.mkdir()
    git(repo, "init", "--quiet")
    for i in range(files):
        directory = repo / f"d{i // FILES_PER_DIR:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    (repo / "README.md").write_text("large repository\n")
    git(repo, "add", "-A", timeout=3600)
    git(repo, "commit", "--quiet", "-m", "large", timeout=3600)
    git(repo, "repack", "-a", "-d", "--quiet", timeout=3600)
    git(repo, "prune", timeout=3600)


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def timed(action: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    outcome = await action
    return outcome, time.perf_counter() - started


def run_command(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=3600)


async def baseline(command: Callable[[Path], list[str]], scratch: Path, runs: int) -> float:
    times = []
    for i in range(runs):
        dest = scratch / f"baseline-{i}"
        _, seconds = await timed(asyncio.to_thread(run_command, *command(dest)))
        times.append(seconds)
        await asyncio.to_thread(shutil.rmtree, dest)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="codeyard-bench-") as temp:
        scratch = Path(temp)
        repo = scratch / "repo"
        started = time.perf_counter()
        await asyncio.to_thread(make_repo, repo, args.files, args.mb * MB)
        print(f"built {args.files} files, {args.mb} MB in {time.perf_counter() - started:.1f} s")
        rss_before = peak_rss_mb(resource.RUSAGE_SELF)

        clone_s = await baseline(
            lambda dest: ["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(dest)],
            scratch,
            args.runs,
        )
        copy_s = await baseline(lambda dest: ["cp", "-r", str(repo), str(dest)], scratch, args.runs)

        times: dict[str, list[float]] = {}

        def record(name: str, seconds: float) -> None:
            times.setdefault(name, []).append(seconds)

        with EmbeddedNats(scratch / "nats") as server:
            bus = await Bus.connect(server.url, name="bench")
            await bus.setup()
            store = await artifact_store(bus.js)
            try:
                for run in range(args.runs):
                    head = git(repo, "rev-parse", "HEAD").strip()
                    full, seconds = await timed(publish_snapshot(store, repo, head))
                    record("publish full snapshot", seconds)
                    cache = SnapshotCache(store, scratch / f"cache-{run}")
                    _, seconds = await timed(cache.checkout(full, scratch / "cold"))
                    record("checkout, cold cache", seconds)
                    _, seconds = await timed(cache.checkout(full, scratch / "warm"))
                    record("checkout, warm cache", seconds)
                    changed = repo / "d000" / "f00000.bin"
                    changed.write_bytes(os.urandom(4096))
                    git(repo, "commit", "--quiet", "-am", f"small change {run}")
                    later, seconds = await timed(publish_snapshot(store, repo, "HEAD", full))
                    record("publish incremental snapshot", seconds)
                    _, seconds = await timed(cache.checkout(later, scratch / "later"))
                    record("checkout incremental, warm cache", seconds)
                    assert cache.downloaded == [full.newest.name, later.newest.name]
                    again, seconds = await timed(publish_snapshot(store, repo, head))
                    assert again == full
                    record("publish same head again (dedup)", seconds)
                    # the next run uploads the full bundle again, so it pays the upload too
                    await store.delete(full.newest.name)
                    for path in ("cold", "warm", "later", f"cache-{run}"):
                        await asyncio.to_thread(shutil.rmtree, scratch / path)
                nats_hwm = vm_hwm_mb(server.pid or 0)
            finally:
                await bus.close()

    print(
        f"machine: {os.cpu_count()} cores; nats-server file store; {args.runs} runs, medians; "
        f"full bundle {full.newest.size / MB:.0f} MB, increment {later.newest.size / 1024:.1f} KiB"
    )
    print(f"{'step':36} {'seconds':>8} {'x git clone':>12} {'x cp -r':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:36} {median:8.2f} {median / clone_s:12.2f} {median / copy_s:8.2f}")
    print(f"{'baseline: git clone --no-hardlinks':36} {clone_s:8.2f}")
    print(f"{'baseline: cp -r (repo with .git)':36} {copy_s:8.2f}")
    print(
        f"peak RSS: this process {peak_rss_mb(resource.RUSAGE_SELF):.0f} MB "
        f"({rss_before:.0f} MB before the first snapshot), "
        f"largest child (git, cp) {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB, "
        f"nats-server {nats_hwm:.0f} MB"
    )


if __name__ == "__main__":
    asyncio.run(main())
