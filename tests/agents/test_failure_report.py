"""Trimming a test run's output to what the coder needs, on real pytest output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codeyard.agents.failure_report import MIN_CHARS, count_tests_run, trim_test_output
from tests.agents.test_policy_rules import SIZE, grows_linearly
from tests.repositories import write_files

FAILING_TEST = (
    "from calc.ops import add\n"
    "\n"
    "\n"
    "def test_add_negative() -> None:\n"
    "    print('noise\\n' * {noise})\n"
    "    assert add(-2, -3) == -6\n"
)


def run_pytest(repo: Path, *args: str) -> str:
    """The output of a real pytest run of `repo`, as the tester would capture it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=yes", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


def add_passing_tests(repo: Path, count: int) -> None:
    body = "".join(f"def test_{n}() -> None:\n    assert True\n\n\n" for n in range(count))
    write_files(repo, {"tests/test_many.py": body})


def test_a_short_failure_is_kept_whole_without_colours(sample_repo: Path) -> None:
    write_files(sample_repo, {"tests/test_negative.py": FAILING_TEST.format(noise=1)})
    output = run_pytest(sample_repo)
    assert "\x1b[" in output

    trimmed = trim_test_output(output, max_chars=len(output))

    assert "\x1b[" not in trimmed
    assert "test session starts" in trimmed
    assert "FAILED tests/test_negative.py::test_add_negative" in trimmed


def test_a_long_run_keeps_the_failure_and_the_summary(sample_repo: Path) -> None:
    add_passing_tests(sample_repo, 300)
    write_files(sample_repo, {"tests/test_negative.py": FAILING_TEST.format(noise=5000)})
    output = run_pytest(sample_repo, "-v")  # a line per passing test, and 5000 lines of print

    trimmed = trim_test_output(output, max_chars=2000)

    assert len(output) > 40_000
    assert len(trimmed) <= 2000
    assert "=== FAILURES ===" in trimmed
    assert "___ test_add_negative ___" in trimmed
    # The end of the failure: the assertion and where it happened.
    assert "E       assert -5 == -6" in trimmed
    assert "tests/test_negative.py:6: AssertionError" in trimmed
    # What it printed is cut to its last lines, under its header.
    assert "- Captured stdout call -" in trimmed
    assert trimmed.count("noise") < 500
    assert "FAILED tests/test_negative.py::test_add_negative - assert -5 == -6" in trimmed
    assert "1 failed, 302 passed" in trimmed
    # The session header and the PASSED lines are gone, with a marker saying how much.
    assert "test session starts" not in trimmed
    assert "PASSED" not in trimmed
    assert trimmed.startswith("[... ")
    assert " characters cut ...]" in trimmed


def test_many_failures_keep_the_first_ones_and_the_full_list(sample_repo: Path) -> None:
    failing = "".join(
        f"def test_broken_{n}() -> None:\n    values = list(range({n}))\n"
        f"    assert sum(values) == -1, 'x' * 200\n\n\n"
        for n in range(40)
    )
    write_files(sample_repo, {"tests/test_broken.py": failing})
    output = run_pytest(sample_repo)

    trimmed = trim_test_output(output, max_chars=6000)

    assert len(trimmed) <= 6000
    assert "___ test_broken_0 ___" in trimmed
    assert "___ test_broken_39 ___" not in trimmed  # did not fit; the summary still names it
    assert "FAILED tests/test_broken.py::test_broken_39" in trimmed
    assert "40 failed, 2 passed" in trimmed


def test_other_output_keeps_its_start_and_its_end() -> None:
    lines = [f"step {n}: ok" for n in range(2000)]
    output = "\n".join(["npm test", *lines, "Error: 3 tests failed", "npm ERR! Test failed."])

    trimmed = trim_test_output(output, max_chars=1000)

    assert len(trimmed) <= 1000
    assert trimmed.startswith("npm test\nstep 0: ok\n")
    assert trimmed.endswith("Error: 3 tests failed\nnpm ERR! Test failed.")
    assert trimmed.count("characters cut ...]") == 1


def test_the_cap_has_a_floor() -> None:
    with pytest.raises(ValueError, match="at least"):
        trim_test_output("x" * 1000, max_chars=MIN_CHARS - 1)


pytest_like = st.lists(
    st.sampled_from(
        [
            "===== test session starts =====",
            "===== FAILURES =====",
            "===== ERRORS =====",
            "_____ test_x _____",
            "===== short test summary info =====",
            "===== 1 failed in 0.1s =====",
            "E   assert 1 == 2",
            "x" * 300,
            "",
        ]
    )
    | st.text(max_size=80),
    max_size=200,
).map("\n".join)


@given(output=pytest_like, max_chars=st.integers(min_value=MIN_CHARS, max_value=3000))
def test_the_result_never_exceeds_the_cap_and_short_output_is_kept(
    output: str, max_chars: int
) -> None:
    trimmed = trim_test_output(output, max_chars)

    assert len(trimmed) <= max_chars
    if len(output) <= max_chars and "\x1b" not in output and "\r" not in output:
        assert trimmed == output


@pytest.mark.parametrize(
    ("output", "count"),
    [
        ("....\n4 passed in 0.12s\n", 4),
        ("===== 1 failed, 2 passed, 1 skipped in 0.10s =====", 3),
        ("F\n=== FAILURES ===\n...\n2 passed, 1 error in 3.0s\n", 3),
        ("\x1b[32m5 passed\x1b[0m in 1.5s", 5),
        ("no tests ran in 0.01s", 0),
        ("npm test: all good", 0),
    ],
)
def test_count_tests_run_reads_pytests_final_counts(output: str, count: int) -> None:
    assert count_tests_run(output) == count


def test_counting_tests_takes_time_linear_in_blank_lines() -> None:
    """From every line start of a run of blank lines, the count's pattern read to the run's end:
    a test printing 30,000 newlines held the tester's event loop for 18 s, past its heartbeats
    (the work was then given to another tester, which froze the same way)."""

    def counting(newlines: int) -> Callable[[], object]:
        captured = "=== FAILURES ===\n___ test_x ___\n--- Captured stdout call ---\n"
        output = captured + "\n" * newlines + "=== 1 failed in 0.1s ===\n"
        return lambda: count_tests_run(output)

    linear, small, large = grows_linearly(counting)
    assert linear, f"{SIZE} blank lines: {small:.3f} s; {4 * SIZE}: {large:.3f} s"
    assert counting(10)() == 1
