"""The benchmarks: the schedule simulation is sound, and every benchmark documents its command
(correctness only; benchmarks print figures, tests never assert timings)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.coordinator_throughput import chain, critical_path, tenths
from bench.schedule_efficiency import latencies_for, simulate
from codeyard.schemas import TaskSpec
from codeyard.testing.dags import random_plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fifo", [False, True])
@pytest.mark.parametrize("coders", [1, 3, 8])
def test_makespan_is_never_below_the_lower_bound(coders: int, fifo: bool) -> None:
    for seed in range(5):
        specs = random_plan(30, seed=seed)
        latency = latencies_for(specs, seed, 0.8)
        outcome = simulate(specs, latency, coders, fifo=fifo)
        assert outcome.lower_bound <= outcome.makespan * (1 + 1e-9)
        assert outcome.makespan <= outcome.total_work * (1 + 1e-9)
        if coders == 1:  # one coder, never idle while work is ready: exactly the total work
            assert math.isclose(outcome.makespan, outcome.total_work)


def test_latency_by_tenth_follows_the_order_of_creation_not_of_arrival() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # item i was created at start + i ms and waited 100 - i ms: the early ones queued longest
    latencies = [(start + timedelta(milliseconds=i), (100 - i) / 1000) for i in range(100)]
    random.Random(1).shuffle(latencies)  # recorded in the order handlers started
    by_tenth = tenths(latencies)
    assert len(by_tenth) == 10
    assert by_tenth == sorted(by_tenth, reverse=True)
    assert by_tenth[0] == pytest.approx(0.096)  # the upper median of 91..100 ms
    assert by_tenth[-1] == pytest.approx(0.006)  # of 1..10 ms


def test_the_critical_path_counts_the_longest_dependency_chain() -> None:
    assert critical_path(chain(7)) == 7
    diamond = [
        TaskSpec(id="d", title="d", deps=["b", "c"]),
        TaskSpec(id="b", title="b", deps=["a"]),
        TaskSpec(id="c", title="c", deps=["a"]),
        TaskSpec(id="a", title="a"),
    ]
    assert critical_path(diamond) == 3
    assert critical_path([TaskSpec(id=f"t{i}", title="t") for i in range(5)]) == 1
    assert 1 < critical_path(random_plan(300, seed=1)) < 300


@pytest.mark.parametrize(
    "module",
    [
        "bus_latency",
        "coordinator_throughput",
        "coder_scaling",
        "schedule_efficiency",
        "sandbox_overhead",
        "snapshot_large_repo",
    ],
)
def test_every_benchmark_documents_its_command(module: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"python -m bench.{module}" in shown.stdout


def test_the_account_crossing_benchmark_runs_both_layouts_and_prints_their_ratio() -> None:
    """Tiny sizes, one run: it runs to the end on servers of its own and prints a figure of
    each layout and their ratio per row (the figures themselves are not checked)."""
    shown = subprocess.run(
        [
            *(sys.executable, "-m", "bench.account_crossing"),
            *("--items", "20", "--runs", "1", "--requests", "3", "--concurrency", "4"),
            *("--in-flight", "8"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()[1:]
    assert header.split() == ["single", "account", "accounts", "accounts/single"]
    names = ["items/s end to end", "dispatch p50 ms", "object info", "consumer info"]
    for name in names:
        [row] = [row for row in rows if row.startswith(name)]
        float(row.split()[-1])  # the ratio accounts / single account
    assert "NATS refused" not in shown.stderr  # each principal did only what it may
    helped = subprocess.run(
        [sys.executable, "-m", "bench.account_crossing", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "python -m bench.account_crossing" in helped.stdout
