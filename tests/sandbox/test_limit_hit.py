"""Which limit stopped a run, told from what every backend sees: pure, no sandbox needed."""

from __future__ import annotations

import pytest

from codeyard.sandbox.limit_hit import limit_hit


@pytest.mark.parametrize(
    "output",
    [
        "BlockingIOError: [Errno 11] Resource temporarily unavailable\n",
        "sh: 1: Cannot fork\n",  # dash
        "bash: fork: retry: Resource temporarily unavailable\n",
        "bash: fork: Resource temporarily unavailable\n",
    ],
)
def test_a_fork_refused_is_the_pids_limit_when_no_cgroup_says(output: str) -> None:
    assert limit_hit(2, False, f"running\n{output}", pids_hit=None) == "pids"
    assert limit_hit(2, False, output, pids_hit=False) == ""  # the cgroup knows better
    assert limit_hit(0, False, output, pids_hit=None) == ""  # (the engine cannot tell)


def test_other_failures_are_no_limit() -> None:
    assert limit_hit(1, False, "Resource temporarily unavailable: a socket\n", None) == ""
    assert limit_hit(1, False, "echo 'sh: 1: Cannot fork' in a test name\n", None) == ""
    assert limit_hit(1, False, "AssertionError\n", None) == ""


def test_what_the_cgroups_saw_counts_even_when_the_command_ended_well() -> None:
    assert limit_hit(0, False, "", pids_hit=True) == "pids"
    assert limit_hit(0, False, "", pids_hit=False, memory_hit=True) == "memory"
    assert limit_hit(0, True, "", pids_hit=False) == "wall_time"
    assert limit_hit(152, False, "", pids_hit=False) == "cpu"
