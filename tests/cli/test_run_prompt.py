"""`codeyard run` on a terminal, asking `approve? [y/n]` while nobody types: the run ending
meanwhile (a cancel, someone else's answer, the approval timing out) or a Ctrl-C ends it at
once. It used to wait for its prompt's thread at exit, until Enter was pressed."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

from codeyard.schemas import ApprovalList, TaskSpec
from tests.cli.test_ops import ANSI
from tests.cli.test_run import codeyard_up, repo
from tests.processes import codeyard, kill

__all__ = ["codeyard_up", "repo"]  # fixtures, shared with test_run

PROMPT = "approve? [y/n]"
EXITS_WITHIN = 20.0  # seconds, once the run ended or Ctrl-C was pressed: a loaded 2-core machine


class Terminal:
    """A `codeyard run` whose stdin is a pseudo-terminal nobody types in; what it shows there
    (or on its stdout, piped) is read as it comes (a full buffer would block it)."""

    def __init__(self, process: subprocess.Popen[bytes], shown: int, keyboard: int) -> None:
        self.process = process
        self._shown = shown
        self._keyboard = keyboard
        self._seen = bytearray()
        self._reading = threading.Thread(target=self._read, daemon=True)
        self._reading.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._shown, 65536)
            except OSError:  # EIO: the child is gone and the terminal closed
                return
            if not chunk:
                return
            self._seen += chunk

    @property
    def screen(self) -> str:
        return ANSI.sub("", bytes(self._seen).decode(errors="replace"))

    def type(self, line: str) -> None:
        os.write(self._keyboard, f"{line}\n".encode())

    async def shows(self, text: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.screen:
            assert self.process.poll() is None, f"exited before showing {text!r}: {self.screen}"
            assert time.monotonic() < deadline, f"{text!r} not shown: {self.screen}"
            await asyncio.sleep(0.1)

    async def exit_code(self, within: float) -> int:
        """How it exits, which it must within `within` seconds."""
        try:
            code = await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {within:g}s: {self.screen}") from None
        self._reading.join(5)
        return code


@contextmanager
def on_a_terminal(env: dict[str, str], *args: str, piped: bool = False) -> Iterator[Terminal]:
    """`codeyard run ARGS` on a terminal; `piped`: its stdout is not (`codeyard run | tee`),
    so it prints lines rather than the live view, and still asks."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "codeyard", "run", *args],
        env=env | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        stdin=terminal,
        stdout=subprocess.PIPE if piped else terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    assert process.stdout is not None or not piped
    try:
        shown = process.stdout.fileno() if process.stdout else controller
        yield Terminal(process, shown, keyboard=controller)
    finally:
        kill(process)
        os.close(controller)


def waiting_for_plan_approval(repo: Path, tmp_path: Path, run_id: str) -> tuple[str, ...]:
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    return ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", run_id, "--approve-plan")


@pytest.mark.parametrize("piped", [False, True], ids=["live-view", "stdout-piped"])
async def test_a_run_cancelled_while_its_prompt_waits_ends_codeyard_run(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path, piped: bool
) -> None:
    waiting = waiting_for_plan_approval(repo, tmp_path, "r1")
    with on_a_terminal(codeyard_up, *waiting, piped=piped) as run:
        await run.shows(PROMPT)
        cancelled = await asyncio.to_thread(
            codeyard, codeyard_up, "cancel", "r1", "--reason", "a teammate"
        )
        assert cancelled.returncode == 0, cancelled.stderr
        # 1: the run was cancelled (not 134, Python aborting at exit over stdin still read)
        assert await run.exit_code(within=EXITS_WITHIN) == 1
        assert "run r1 cancelled: 0/1 tasks merged" in run.screen


async def test_one_prompt_answered_and_the_next_from_elsewhere(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """The plan approved at the prompt; the merge, while it is asked about, with `codeyard
    approve`: the run ends, and so does `codeyard run`."""
    waiting = (*waiting_for_plan_approval(repo, tmp_path, "r3"), "--approve-merge")
    with on_a_terminal(codeyard_up, *waiting) as run:
        await run.shows(PROMPT)
        run.type("y")
        await run.shows("a: merge")  # asked next
        listed = await asyncio.to_thread(
            codeyard, codeyard_up, "approvals", "--run", "r3", "--json"
        )
        [merge] = msgspec.json.decode(listed.stdout, type=ApprovalList).approvals
        approved = await asyncio.to_thread(codeyard, codeyard_up, "approve", merge.approval_id)
        assert approved.returncode == 0, approved.stderr
        assert await run.exit_code(within=EXITS_WITHIN) == 0
        assert "approved " in run.screen  # the plan, at the prompt
        assert "run r3 done: 1/1 tasks merged" in run.screen


async def test_ctrl_c_at_the_prompt_stops_following_at_once(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    with on_a_terminal(codeyard_up, *waiting_for_plan_approval(repo, tmp_path, "r2")) as run:
        await run.shows(PROMPT)
        run.process.send_signal(signal.SIGINT)  # once
        assert await run.exit_code(within=EXITS_WITHIN) == 130
        assert run.process.stderr is not None
        said = run.process.stderr.read().decode()
    assert "run r2 keeps going: follow it with `codeyard logs -f r2`" in said
    status = await asyncio.to_thread(codeyard, codeyard_up, "status", "r2")
    assert "plan_approval" in status.stdout  # still waiting for someone to approve its plan


async def test_a_warning_waits_for_the_answer_of_a_prompt_it_would_land_in(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """Nobody serves the run's reviewer: `codeyard run` warns after a few seconds, which used to
    land in the middle of `approve? [y/n]` (on a terminal, stderr is the screen too)."""
    waiting = (*waiting_for_plan_approval(repo, tmp_path, "r4"), "--reviewer", "review.nosuch")
    with on_a_terminal(codeyard_up, *waiting) as run:
        await run.shows(PROMPT)
        assert run.process.stderr is not None
        stderr = run.process.stderr.fileno()
        os.set_blocking(stderr, False)
        await asyncio.sleep(8)  # the warning's window (4 s) is over
        with pytest.raises(BlockingIOError):  # nothing said while the question waits
            os.read(stderr, 4096)

        run.type("y")
        os.set_blocking(stderr, True)
        said = (await asyncio.wait_for(asyncio.to_thread(os.read, stderr, 4096), 30)).decode()
    assert said.startswith("warning: no worker of review.nosuch announced itself"), said
