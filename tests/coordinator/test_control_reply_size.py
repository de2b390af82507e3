"""Control replies too big for one NATS message: answered all the same, never left unsent (the
client would only hear that no coordinator answered)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from codeyard.bus import Bus
from codeyard.bus.subjects import APPROVALS_BUCKET, ctl_subject
from codeyard.coordinator import service
from codeyard.coordinator.service import Coordinator
from codeyard.follow import run_status
from codeyard.schemas import (
    ApprovalList,
    CancelRun,
    ControlError,
    ControlReply,
    Envelope,
    ListApprovals,
    PendingApproval,
    RunStatus,
    StatusQuery,
    SubmitRun,
    TaskSpec,
    encode,
)
from codeyard.schemas.model import LONG_TEXT_CHARS, RunState, Task
from tests.coordinator.harness import ask, running_coordinator
from tests.coordinator.plans import new_run

# A goal as long as a goal may be, of 4-byte characters: a run header of about 80 KB.
BIG_GOAL = "\U0001f600" * LONG_TEXT_CHARS


@pytest.fixture
async def coordinator(bus: Bus) -> AsyncIterator[Coordinator]:
    async with running_coordinator(Coordinator(bus, name="coord-size", capacity=4)) as coordinator:
        yield coordinator


async def control(bus: Bus, verb: str, request: Envelope) -> ControlReply:
    """One request, no retries: a reply never sent fails the test in 10 s rather than 30."""
    reply: ControlReply = await bus.request(ctl_subject(verb), request, ControlReply, 10)
    return reply


async def test_a_run_status_over_the_message_limit_is_refused_saying_so(
    bus: Bus, coordinator: Coordinator
) -> None:
    # 5,000 tasks: a 0.13 MB submission, a status of 1.4 MB
    plan = [TaskSpec(id=f"t{i}", title="x") for i in range(5000)]
    submitted = await ask(
        bus, "submit", SubmitRun(run_id="huge", goal="g", plan=plan, approve_plan=True)
    )
    assert not isinstance(submitted, ControlError), submitted

    reply = await control(bus, "status", StatusQuery(run_id="huge"))

    assert isinstance(reply, ControlError), type(reply)
    limit = bus.nc.max_payload
    assert reply.run_id == "huge"
    assert reply.error.startswith("the status of run huge is ")
    assert reply.error.endswith(f"bytes, over the server's {limit}-byte message limit")
    # its header alone still comes in the status of every run
    every = await control(bus, "status", StatusQuery())
    assert isinstance(every, RunStatus)
    assert [run.run_id for run in every.runs] == ["huge"]


async def test_the_status_of_every_run_leaves_out_the_oldest_ended_runs_to_fit(
    bus: Bus, coordinator: Coordinator
) -> None:
    run_ids = [f"r{i:02}" for i in range(16)]  # 16 headers of 80 KB: 1.3 MB
    for run_id in run_ids:
        request = SubmitRun(
            run_id=run_id, goal=BIG_GOAL, plan=[TaskSpec(id="x", title="x")], approve_plan=True
        )
        assert not isinstance(await ask(bus, "submit", request), ControlError)
    ended, still_open = run_ids[:13], run_ids[13:]
    for run_id in ended:
        assert not isinstance(await ask(bus, "cancel", CancelRun(run_id=run_id)), ControlError)

    reply = await control(bus, "status", StatusQuery())

    assert isinstance(reply, RunStatus), reply
    assert len(encode(reply)) <= bus.nc.max_payload
    listed = [run.run_id for run in reply.runs]
    assert reply.omitted == len(run_ids) - len(listed) > 0
    assert listed == run_ids[reply.omitted :]  # the ones that ended first are left out
    assert set(still_open) <= set(listed)


async def test_the_status_of_every_run_cuts_goals_short_when_open_runs_alone_do_not_fit(
    bus: Bus, coordinator: Coordinator
) -> None:
    run_ids = [f"r{i:02}" for i in range(16)]  # 16 open runs of 80 KB headers: 1.3 MB
    for run_id in run_ids:
        request = SubmitRun(
            run_id=run_id, goal=BIG_GOAL, plan=[TaskSpec(id="x", title="x")], approve_plan=True
        )
        assert not isinstance(await ask(bus, "submit", request), ControlError)

    reply = await control(bus, "status", StatusQuery())

    assert isinstance(reply, RunStatus), reply
    assert [run.run_id for run in reply.runs] == run_ids
    assert reply.omitted == 0
    assert all(run.goal.endswith("characters cut]") for run in reply.runs)
    assert all(run.goal.startswith("\U0001f600" * 100) for run in reply.runs)
    one = await control(bus, "status", StatusQuery(run_id="r00"))
    assert isinstance(one, RunStatus)
    assert one.runs[0].goal == BIG_GOAL  # whole in the run's own status


async def test_a_list_of_approvals_leaves_out_the_newest_to_fit(
    bus: Bus, coordinator: Coordinator
) -> None:
    run_ids = [f"a{i:02}" for i in range(14)]
    for run_id in run_ids:
        request = SubmitRun(
            run_id=run_id, goal="g", plan=[TaskSpec(id="x", title="x")], approve_plan=True
        )
        assert not isinstance(await ask(bus, "submit", request), ControlError)
    listed = await control(bus, "approvals", ListApprovals())
    assert isinstance(listed, ApprovalList)
    assert [approval.run_id for approval in listed.approvals] == run_ids
    assert listed.omitted == 0
    # questions as long as they may be (a gate's reason can be): 14 of 80 KB
    approvals = await bus.store(APPROVALS_BUCKET, PendingApproval)
    for approval in listed.approvals:
        big = msgspec.structs.replace(approval, detail=BIG_GOAL)
        await approvals.put(approval.approval_id, big)

    reply = await control(bus, "approvals", ListApprovals())

    assert isinstance(reply, ApprovalList), reply
    assert len(encode(reply)) <= bus.nc.max_payload
    kept = [approval.run_id for approval in reply.approvals]
    assert reply.omitted == len(run_ids) - len(kept) > 0
    assert kept == run_ids[: len(kept)]  # the oldest, which are denied first
    # one run's are asked for on their own (`codeyard run` answering its own, --run)
    newest = await control(bus, "approvals", ListApprovals(run_id=run_ids[-1]))
    assert isinstance(newest, ApprovalList)
    assert [approval.run_id for approval in newest.approvals] == [run_ids[-1]]
    assert newest.approvals[0].detail == BIG_GOAL


async def test_a_run_too_big_for_one_reply_is_read_in_pages(
    bus: Bus, coordinator: Coordinator
) -> None:
    """`codeyard status RUN`, `codeyard run` (at its end), reports and the dashboard read a run
    that way: a run of thousands of tasks, or of a few dozen with long test outputs and
    feedback, was refused to each of them."""
    plan = [TaskSpec(id=f"t{i}", title="x") for i in range(5000)]
    submission = SubmitRun(run_id="huge", goal="g", plan=plan, approve_plan=True)
    assert not isinstance(await ask(bus, "submit", submission), ControlError)

    first = await control(bus, "status", StatusQuery(run_id="huge", paged=True))
    read = await run_status(bus, "huge")

    assert isinstance(first, RunStatus)
    assert first.more_after  # a page: more tasks come after it
    assert len(encode(first)) <= bus.nc.max_payload
    assert list(first.runs[0].tasks) == sorted(first.runs[0].tasks)
    assert isinstance(read, RunStatus)
    [run] = read.runs
    assert set(run.tasks) == {task.id for task in plan}
    assert run.state is RunState.PLAN_APPROVAL


async def test_a_run_that_fits_in_one_reply_comes_whole_in_its_own_order(
    bus: Bus, coordinator: Coordinator
) -> None:
    plan = [TaskSpec(id=task_id, title="x") for task_id in ("b", "c", "a")]
    await ask(bus, "submit", SubmitRun(run_id="small", goal="g", plan=plan, approve_plan=True))

    reply = await control(bus, "status", StatusQuery(run_id="small", paged=True))

    assert isinstance(reply, RunStatus)
    assert reply.more_after == ""
    assert list(reply.runs[0].tasks) == ["b", "c", "a"]


def test_a_page_of_a_run_too_big_for_a_reply_encodes_about_a_page(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page encoded the whole run first, to see whether it fitted: for a run of tens of
    thousands of tasks, megabytes per page, on the loop that takes every run's steps."""
    tasks = {f"t{i:05}": Task(spec=TaskSpec(id=f"t{i:05}", title="x")) for i in range(20_000)}
    run = msgspec.structs.replace(new_run(), run_id="huge", tasks=tasks)
    whole = len(encode(RunStatus(run_id="huge", runs=[run])))
    encoded: list[int] = []

    def counting(message: msgspec.Struct) -> bytes:
        payload = encode(message)
        encoded.append(len(payload))
        return payload

    monkeypatch.setattr(service, "encode", counting)
    pages = [coordinator._page(run, after) for after in ("", "t10000")]

    assert whole > 4 * coordinator.bus.nc.max_payload
    assert all(isinstance(page, RunStatus) and page.more_after for page in pages)
    assert sum(encoded) < 3 * coordinator.bus.nc.max_payload, sum(encoded)
