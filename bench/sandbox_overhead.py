"""Sandbox overhead: start-to-exit wall time per backend, against the bare command.

    python -m bench.sandbox_overhead [--runs 20] [--pytest-runs 10] [--backends bwrap ...]

Two commands, each in a fresh copy of a tiny package (one module, three tests):

- `python -c pass`
- `python -m pytest -q -p no:cacheprovider` (3 tests)

timed from the backend's `run()` call to its return (wall clock, so container creation and
removal, bubblewrap's namespaces, cgroups and the rlimits' `prlimit` all count). The baseline is the
same command as a bare subprocess of the interpreter running codeyard (`sys.executable`),
measured in the same invocation; the runs of all backends are interleaved so a busy machine
slows them alike. Figures are medians. A backend that is not available here is skipped with
the reason. Note: docker runs the image's Debian python3 and pytest, the others the
interpreter running codeyard (with its installed pytest plugins), so the pytest rows compare
different Pythons for docker.

Targets (issue 8): bwrap at most 1.5x bare `python -c pass`; docker at most 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from codeyard.config import Settings
from codeyard.sandbox import (
    BwrapSandbox,
    DockerSandbox,
    Limits,
    ProcessSandbox,
    Sandbox,
    SandboxUnavailable,
)

PASS = ["python", "-c", "pass"]
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
LIMITS = Limits(wall_seconds=120)

PACKAGE = {
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    "tests/test_ops.py": (
        "from calc.ops import add, mul\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_mul():\n    assert mul(2, 3) == 6\n\n\n"
        "def test_add_negative():\n    assert add(-1, 1) == 0\n"
    ),
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["."]\n',
}

Runner = Callable[[Path, list[str]], Awaitable[bool]]


def make_package(root: Path) -> None:
    for name, text in PACKAGE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


async def bare(workdir: Path, command: list[str]) -> bool:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return await process.wait() == 0


def sandboxed(sandbox: Sandbox) -> Runner:
    async def run(workdir: Path, command: list[str]) -> bool:
        outcome = await sandbox.run(workdir, command, LIMITS)
        if not outcome.ok:
            print(f"  {sandbox.name}: {command} failed ({outcome.exit_code}): {outcome.output}")
        return outcome.ok

    return run


def available_backends(names: list[str]) -> tuple[dict[str, Runner], dict[str, str]]:
    """The runners that work here, and why each other one was skipped."""
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    settings = Settings()
    for name in names:
        try:
            sandbox: Sandbox
            if name == "bwrap":
                bwrap = BwrapSandbox()
                bwrap.probe()
                sandbox = bwrap
            elif name == "docker":
                docker = DockerSandbox(
                    docker_host=settings.docker_host, image=settings.sandbox_image
                )
                docker.probe()
                sandbox = docker
            elif name == "process":
                sandbox = ProcessSandbox(opt_in=True)  # a benchmark of trusted commands
            else:
                raise SandboxUnavailable(f"unknown backend {name!r}")
        except SandboxUnavailable as exc:
            skipped[name] = str(exc)
            continue
        runners[name] = sandboxed(sandbox)
    return runners, skipped


async def time_runs(
    runners: dict[str, Runner], command: list[str], runs: int, scratch: Path
) -> dict[str, list[float]]:
    """Wall seconds per runner, runs interleaved across runners; a fresh package each time."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    template = scratch / "template"
    make_package(template)
    for run in range(runs + 1):  # the first round warms caches and is not counted
        for name, runner in runners.items():
            workdir = scratch / f"{name}-{run}"
            shutil.copytree(template, workdir)
            started = time.perf_counter()
            ok = await runner(workdir, command)
            elapsed = time.perf_counter() - started
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            if not ok:
                raise RuntimeError(f"{name}: {' '.join(command)} failed")
            if run:
                times[name].append(elapsed)
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(times["bare"])
    print(f"{title}")
    print(f"  {'backend':8} {'median ms':>10} {'p90 ms':>8} {'x bare':>7} {'overhead ms':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = sorted(values)[min(len(values) - 1, int(0.9 * len(values)))]
        print(
            f"  {name:8} {median * 1000:10.1f} {p90 * 1000:8.1f} {median / base:7.2f} "
            f"{(median - base) * 1000:12.1f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of `python -c pass`")
    parser.add_argument("--pytest-runs", type=int, default=10, help="runs of the pytest command")
    parser.add_argument("--backends", nargs="+", default=["bwrap", "docker", "process"])
    args = parser.parse_args()

    backends, skipped = await asyncio.to_thread(available_backends, args.backends)
    runners: dict[str, Runner] = {"bare": bare, **backends}
    # bwrap refuses a workdir under the interpreter's tree; a temp dir is never one
    with tempfile.TemporaryDirectory(prefix="codeyard-bench-") as tmp:
        scratch = Path(tmp)
        pass_times = await time_runs(runners, PASS, args.runs, scratch)
        pytest_times = await time_runs(runners, PYTEST, args.pytest_runs, scratch)

    print(
        f"machine: {os.cpu_count()} cores; medians of {args.runs} (`python -c pass`) and "
        f"{args.pytest_runs} (pytest) runs after one warm-up; wall time of run()"
    )
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    report("python -c pass", pass_times)
    report("pytest, 3 tests", pytest_times)


if __name__ == "__main__":
    asyncio.run(main())
