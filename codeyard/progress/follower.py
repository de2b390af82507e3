"""How `codeyard run` follows its run: a live tree on a terminal, lines otherwise (pipes, tests,
CI logs), nothing with `--json`; and who answers approvals: a prompt, `--yes`, or someone else."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO, TypeVar, cast

from rich.console import Console
from rich.live import Live
from rich.prompt import Confirm
from rich.text import Text

from codeyard import follow as following
from codeyard.bus import Bus
from codeyard.follow import EventSink, print_event
from codeyard.progress.approvals import InlineApprovals, describe_approval, waits_for_a_person
from codeyard.progress.render import render_run
from codeyard.progress.view import RunView
from codeyard.schemas import (
    RUN_QUESTIONS,
    PendingApproval,
    Run,
    RunEvent,
    SubmitRun,
    UsageReported,
)
from codeyard.schemas.envelope import utc_now
from codeyard.terminal_text import terminal_safe

T = TypeVar("T")

WAITING_NOTICE = "waits for a person: `codeyard approvals`, then `codeyard approve ID`"


@dataclass(frozen=True)
class FollowOptions:
    live: bool  # stdout is a terminal: draw the live view
    quiet: bool  # --json: stdout is for the final JSON only; say things on stderr
    prompt: bool  # stdin is a terminal: ask for each approval
    yes: bool  # approve everything the run waits for
    by: str  # who answers, as recorded with each answer


class UnpricedCalls:
    """Tells, once, that a run's `--max-cost` cannot stop it: its calls cost $0 where the agents
    run (no prices set: the default). Only the agents' settings price a call, so it is told
    from what they reported, not guessed from the settings here."""

    def __init__(self, max_cost_usd: float) -> None:
        self._max_cost_usd = max_cost_usd
        self._told = not max_cost_usd

    def warning(self, event: RunEvent) -> str:
        if self._told or not isinstance(event, UsageReported):
            return ""
        if not event.usage.calls or event.usage.cost_usd:
            return ""
        self._told = True
        model = f" ({terminal_safe(event.model)})" if event.model else ""
        return (
            f"the {terminal_safe(event.role)}'s LLM calls{model} are priced at $0 where "
            "it runs (set CODEYARD_LLM_PRICES, or CODEYARD_LLM_INPUT_PRICE_PER_MTOK and "
            f"CODEYARD_LLM_OUTPUT_PRICE_PER_MTOK, there): --max-cost {self._max_cost_usd:g} "
            "does not limit them; --max-tokens does"
        )


class RunFollower:
    def __init__(self, console: Console, err: Console, options: FollowOptions) -> None:
        self._console = console
        self._err = err
        self._options = options
        self._live: Live | None = None
        self._view: RunView | None = None
        # Whether the run was heard of: its submission answered with an event or a record. Until
        # then a coordinator may not have taken it (none was answering, say).
        self.heard_from_run = False
        self._asking = False  # a prompt waits for its answer
        self._held: list[str] = []  # warnings said once it has it

    async def follow(self, bus: Bus, submit: SubmitRun, timeout: float) -> Run:
        options = self._options
        view = self._view = RunView(submit.run_id, goal=submit.goal)
        # Not answering here, it still looks: a question of the run's own (its plan, its budget)
        # comes with no id in the events, unlike the gate's, and is told with its commands.
        decide = self._decide if options.yes or options.prompt else self._tell
        approvals = InlineApprovals(bus, submit.run_id, decide, self._say, options.by)
        lines = None if options.live or options.quiet else print_event(self._console)

        unpriced = UnpricedCalls(submit.budget.max_cost_usd)

        def on_event(event: RunEvent) -> None:
            self.heard_from_run = True
            view.apply(event)
            if warning := unpriced.warning(event):
                self.warn(warning)
            if lines is not None:
                lines(event)
            self._refresh()
            if waits_for_a_person(event):
                approvals.nudge()

        def on_status(run: Run) -> None:
            self.heard_from_run = True
            view.update(run)
            self._refresh()
            if view.waiting_for_a_person:
                approvals.nudge()

        sink: EventSink = on_event
        if options.live:
            self._live = Live(
                render_run(view, utc_now()), console=self._console, refresh_per_second=4
            )
            self._live.start()
        try:
            # looked up when called, so a test can stand in for the bus side
            final = await following.submit_and_follow(
                bus,
                submit,
                self._console,
                timeout,
                on_event=sink,
                on_status=on_status if options.live else None,
            )
            view.update(final)
            self._refresh()
            return final
        finally:
            await approvals.close()
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _refresh(self) -> None:
        if self._live is None or self._view is None:
            return
        view = self._view
        waiting = view.waiting_for_a_person and not (self._options.yes or self._options.prompt)
        self._live.update(render_run(view, utc_now(), WAITING_NOTICE if waiting else ""))

    def _say(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            (self._err if self._options.quiet else self._console).print(
                line, markup=False, highlight=False
            )

    def warn(self, message: str) -> None:
        """`message` on stderr after `warning:`; while a prompt waits for its answer, once it
        has it (said then, it would land in the middle of the question)."""
        if self._asking:
            self._held.append(message)
            return
        self._err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)

    async def _tell(self, approval: PendingApproval) -> None:
        if approval.action in RUN_QUESTIONS:
            self._say(f"{approval.run_id} waits: {describe_approval(approval)}")
            approval_id = approval.approval_id
            self._say(f"    codeyard approve {approval_id}   or   codeyard deny {approval_id}")

    async def _decide(self, approval: PendingApproval) -> bool | None:
        if self._options.yes:
            return True
        question = f"{approval.run_id} waits: {describe_approval(approval)}. approve?"
        prompt_console = self._err if self._options.quiet else self._console
        live = self._live
        if live is not None:  # a prompt under a redrawn view would be overwritten
            live.stop()
        self._asking = True
        try:
            # stdin read as a file of our own: at exit, Python takes the lock of sys.stdin's
            # buffer, which a thread left reading it holds (a fatal error, exit 134); rich
            # calls only its readline
            stdin = cast(TextIO, _LineReader(sys.stdin.fileno()))
            return await _in_daemon_thread(
                lambda: Confirm.ask(Text(question), console=prompt_console, stream=stdin)
            )
        except EOFError:  # stdin closed (Ctrl-D): nobody answers here
            return None
        finally:
            self._asking = False
            if live is not None:
                live.start()
            held, self._held = self._held, []
            for message in held:
                self.warn(message)


async def _in_daemon_thread(work: Callable[[], T]) -> T:
    """`work()` in a thread of its own, its outcome handed back through the loop.

    Not `asyncio.to_thread`: a prompt may wait for ever, and `asyncio.run` waits at its end for
    every thread of the default executor: the run ended (someone else answered, a cancel, a
    timeout) or a Ctrl-C, and `codeyard run` would not exit until Enter was pressed. A daemon
    thread nobody waits for is left behind, still reading, as the process exits."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(set_outcome: Callable[[], None]) -> None:  # on the loop
        if not outcome.done():  # cancelled: nobody waits for the answer any more
            set_outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to whoever awaits it, as to_thread does
            set_outcome = functools.partial(outcome.set_exception, exc)
        else:
            set_outcome = functools.partial(outcome.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits either
            loop.call_soon_threadsafe(settle, set_outcome)

    threading.Thread(target=run, name="codeyard-prompt", daemon=True).start()
    return await outcome


class _LineReader:
    """stdin as `Confirm.ask` reads it (`readline`), straight from its file descriptor, one
    byte at a time so that nothing after the line is taken from whatever reads stdin next."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readline(self) -> str:
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = os.read(self._fd, 1)
            if not byte:  # as `input()` does; an empty line would be asked again, for ever
                if not line:
                    raise EOFError
                break
            line += byte
        return line.decode(errors="replace")
