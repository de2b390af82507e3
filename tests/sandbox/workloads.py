"""What the sandbox tests run: small Python programs, a tiny package with a test, limits."""

from __future__ import annotations

import textwrap
from pathlib import Path

from codeyard.sandbox import Limits, MiB, RunOutcome, Sandbox

FAST = Limits(wall_seconds=20, cpu_seconds=20, memory_bytes=512 * MiB, pids=64)
# Timings are never asserted tightly: a shared 2-core machine may stall anything for seconds.
SLACK_SECONDS = 20.0


async def run_python(
    sandbox: Sandbox,
    workdir: Path,
    code: str,
    *args: str,
    limits: Limits = FAST,
    env: dict[str, str] | None = None,
) -> RunOutcome:
    command = ["python", "-c", textwrap.dedent(code), *args]
    return await sandbox.run(workdir, command, limits, env)


# Opens /dev/null until the open-files limit says no, then tries to raise that limit.
OPEN_TOO_MANY_FILES = """
    import errno, os, resource
    print("RLIMIT_NOFILE", *resource.getrlimit(resource.RLIMIT_NOFILE), flush=True)
    files = []
    try:
        while len(files) < 10_000:
            files.append(open(os.devnull))
    except OSError as exc:
        print("opened", len(files), "then", errno.errorcode[exc.errno], exc.strerror, flush=True)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (10_000, 10_000))
        print("RAISED", *resource.getrlimit(resource.RLIMIT_NOFILE))
    except (ValueError, OSError) as exc:
        print("could not raise it:", exc)
    open(os.devnull)  # still at the limit: fails the run
"""


def assert_refused_files_beyond(output: str, limit: int) -> None:
    """OPEN_TOO_MANY_FILES ran under an open-files limit of `limit` and was refused near it
    (what Python holds open itself counts too)."""
    assert f"RLIMIT_NOFILE {limit} {limit}" in output
    assert "then EMFILE Too many open files" in output
    opened = int(output.split("opened ")[1].split()[0])
    assert limit - 16 < opened < limit


def write_package(workdir: Path, assertion: str) -> None:
    """A package `calc` with one test asserting `assertion` (e.g. "add(2, 2) == 4")."""
    (workdir / "calc").mkdir()
    (workdir / "calc" / "__init__.py").write_text("def add(a, b):\n    return a + b\n")
    (workdir / "tests").mkdir()
    (workdir / "tests" / "test_calc.py").write_text(
        f"from calc import add\n\n\ndef test_add():\n    assert {assertion}\n"
    )
    (workdir / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
