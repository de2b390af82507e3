"""An input whose applying fails in a way no retry changes (a bug): its step is dropped and the
runs reloaded, as for trouble on the bus, and after `POISON_STEPS` such failures the input is set
aside: a result or a merge of the coordinator's own is filed as a dead letter, a submission is
refused. It used to end the coordinator's process, and every coordinator's after it, at each
delivery of that result (or each merge of that task), so that no run went on."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import datetime

import nats.errors

from codeyard.bus import Bus
from codeyard.bus.subjects import DEAD_LETTER_RUN, ctl_subject
from codeyard.coordinator.effects import Effect
from codeyard.coordinator.events import Cancel, Event, Merged, MergeFailed
from codeyard.coordinator.service import (
    POISON_STEPS,
    Commit,
    Coordinator,
    FollowUp,
    OpenRun,
    Prepared,
)
from codeyard.schemas import (
    Accepted,
    CancelRun,
    ControlError,
    ControlReply,
    DeadLetter,
    Envelope,
    Result,
    RunState,
    SubmitRun,
    TaskSpec,
    TaskState,
)
from codeyard.schemas.codec import decode, encode
from codeyard.schemas.model import FeedbackKind
from tests.bus.test_worker import until
from tests.coordinator.harness import (
    ask,
    leader_name,
    run_events,
    running_coordinator,
    scripted_coder,
    status,
    submit,
    wait_for_task,
    workers_answering,
)


class BuggyCoordinator(Coordinator):
    """Fails on every result of task `poison`, as an engine bug would."""

    def _on_result(
        self, result: Result, commit: Commit, now: datetime, counted: bool = True
    ) -> bool:
        if result.task_id == "poison":
            raise RuntimeError("engine bug")
        return super()._on_result(result, commit, now, counted)


async def dead_letters(bus: Bus, run_id: str = DEAD_LETTER_RUN) -> list[DeadLetter]:
    """The dead letters filed so far among the run's events (the unrouted ones by default),
    waiting up to 60 s for the first."""
    for _ in range(300):
        events = await run_events(bus, run_id)
        if letters := [event for event in events if isinstance(event, DeadLetter)]:
            return letters
        await asyncio.sleep(0.2)
    return []


async def test_a_result_that_fails_every_step_is_dead_lettered_and_the_rest_goes_on(
    bus: Bus,
) -> None:
    plan = [TaskSpec(id="poison", title="p"), TaskSpec(id="fine", title="f")]
    coordinator = BuggyCoordinator(bus, name="coord-buggy")
    async with running_coordinator(coordinator), workers_answering(bus, scripted_coder()):
        await submit(bus, plan, run_id="r1")
        await wait_for_task(bus, "r1", "fine", TaskState.MERGED)
        letters = await dead_letters(bus)
        run = await status(bus, "r1")
        assert await leader_name(bus) == "coord-buggy"  # still leading, and answering

    [letter] = letters
    assert letter.subject == "cy.result.coder"
    assert letter.error == f"applying it failed {POISON_STEPS} times: RuntimeError('engine bug')"
    assert run.tasks["fine"].state is TaskState.MERGED
    assert run.tasks["poison"].state is TaskState.CODING  # its answer is with a person now


class FailingOn(Coordinator):
    """Fails applying the events `bug` picks, as an engine bug would."""

    def __init__(self, bus: Bus, bug: Callable[[Event], bool]) -> None:
        super().__init__(bus, name="coord-buggy")
        self.bug = bug
        self.failed = 0
        self.loads = 0  # leadership sessions started: each loads the runs

    async def _load_runs(self) -> None:
        await super()._load_runs()
        self.loads += 1

    def leads_after(self, loads: int) -> bool:
        return self.loads > loads and self.leading.is_set()

    def failed_more_than(self, failures: int) -> bool:
        return self.failed > failures

    def _apply(
        self,
        open_run: OpenRun,
        event: Event,
        commit: Commit,
        now: datetime,
        result: Result | None = None,
    ) -> list[Effect]:
        if self.bug(event):
            self.failed += 1
            raise RuntimeError("engine bug")
        return super()._apply(open_run, event, commit, now, result)


async def test_a_merge_that_fails_every_step_is_set_aside_and_the_rest_goes_on(bus: Bus) -> None:
    """The merge is sent again by each reload of the run, so it would fail for ever."""
    plan = [TaskSpec(id="poison", title="p"), TaskSpec(id="fine", title="f")]
    coordinator = FailingOn(bus, lambda e: isinstance(e, Merged) and e.task_id == "poison")
    async with running_coordinator(coordinator), workers_answering(bus, scripted_coder()):
        await submit(bus, plan, run_id="r1")
        await wait_for_task(bus, "r1", "fine", TaskState.MERGED)
        letters = await dead_letters(bus, "r1")
        run = await status(bus, "r1")
        assert await leader_name(bus) == "coord-buggy"

    [letter] = letters
    assert (letter.run_id, letter.subject) == ("r1", "")
    assert letter.payload == "Merge(task_id='poison', attempt=1)"
    assert letter.error == f"applying it failed {POISON_STEPS} times: RuntimeError('engine bug')"
    assert run.tasks["poison"].state is TaskState.GATED  # its merge waits for a person


async def test_an_event_of_the_coordinators_own_that_fails_every_step_is_set_aside(
    bus: Bus,
) -> None:
    """A merge's outcome from the background (a follow-up), as it comes again after each
    reload; it ended the coordinator's process."""
    poison = MergeFailed("nope", 1, FeedbackKind.CONFLICT, "poison")

    coordinator = FailingOn(bus, lambda event: event == poison)
    async with running_coordinator(coordinator):
        await submit(bus, [TaskSpec(id="x", title="x")], run_id="r1")
        for failures in range(POISON_STEPS + 1):
            # leading again, its runs reloaded: `leading` alone is still set for a while after
            # the step failed, and the event would go to the inbox of the session that ended
            await until(functools.partial(coordinator.leads_after, failures), 60)
            coordinator._inbox.put_nowait(FollowUp("r1", poison))
            if failures < POISON_STEPS:
                await until(functools.partial(coordinator.failed_more_than, failures), 60)
        letters = await dead_letters(bus, "r1")
        run = await status(bus, "r1")
        assert await leader_name(bus) == "coord-buggy"

    [letter] = letters
    assert (letter.run_id, letter.subject) == ("r1", "")
    assert "poison" in letter.payload
    assert letter.error == f"applying it failed {POISON_STEPS} times: RuntimeError('engine bug')"
    assert run.state is RunState.EXECUTING  # the run goes on


async def asked_until_answered(bus: Bus, verb: str, request: Envelope) -> ControlReply:
    """The reply to `request`, asked again while none comes or the coordinator says to, as a
    client does (a coordinator that drops the step with the request says to send it again)."""
    for _ in range(100):
        try:
            reply = await bus.nc.request(ctl_subject(verb), encode(request), timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.1)
            continue
        answer: ControlReply = decode(reply.data, ControlReply)
        if isinstance(answer, ControlError) and answer.retry:  # its step failed: again
            await asyncio.sleep(0.1)
            continue
        return answer
    raise AssertionError(f"{verb}: never answered")


async def test_a_submission_whose_run_cannot_be_created_is_refused_after_failing_twice(
    bus: Bus,
) -> None:
    class BuggyCreation(Coordinator):
        async def _on_prepared(self, prepared: Prepared, commit: Commit, now: datetime) -> None:
            if prepared.run_id == "poison":
                raise RuntimeError("engine bug")
            await super()._on_prepared(prepared, commit, now)

    submission = SubmitRun(run_id="poison", goal="g", plan=[TaskSpec(id="x", title="x")])
    async with running_coordinator(BuggyCreation(bus, name="coord-buggy")):
        refused = await asked_until_answered(bus, "submit", submission)
        assert isinstance(await ask(bus, "submit", SubmitRun(run_id="fine", goal="g")), Accepted)

    assert isinstance(refused, ControlError)
    assert refused.error == (
        f"creating run poison failed: applying it failed {POISON_STEPS} times: "
        "RuntimeError('engine bug')"
    )


async def test_a_request_whose_event_fails_every_step_is_refused_and_changes_nothing(
    bus: Bus,
) -> None:
    """A cancellation the engine fails on (half applied, perhaps): the step is dropped and the
    run reloaded, rather than the failure answered and the half-changed run stored."""
    coordinator = FailingOn(bus, lambda event: isinstance(event, Cancel))
    async with running_coordinator(coordinator):
        await submit(bus, [TaskSpec(id="x", title="x")], run_id="r1")
        cancel = CancelRun(run_id="r1", reason="stop")
        refused = await asked_until_answered(bus, "cancel", cancel)
        # asked again (a client retrying, the expiry of approvals): refused at once, not
        # tried (and each failure a reload of every run) over again
        again = await asked_until_answered(bus, "cancel", cancel)
        run = await status(bus, "r1")

    assert isinstance(refused, ControlError)
    assert refused.error == (
        f"Cancel not applied: applying it failed {POISON_STEPS} times: RuntimeError('engine bug')"
    )
    assert isinstance(again, ControlError)
    assert again.error == refused.error
    assert coordinator.failed == POISON_STEPS
    assert run.state is RunState.EXECUTING
