"""Work too large to send. A task is at most `MAX_TASK_BYTES` as JSON, so that its work items
and records stay well within a message; before, a plan could hold a task that fit in the
submission but not in its second code request, and the coordinator's step then failed at every
replay of its inputs, holding up every run for good. Work that cannot be sent all the same
fails its task instead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import work_subject
from codeyard.coordinator.events import WorkAbandoned
from codeyard.coordinator.graph import MAX_TASK_BYTES
from codeyard.coordinator.service import Coordinator, FollowUp
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    ControlError,
    Patch,
    Result,
    SubmitRun,
    TaskSpec,
    TestRequest,
    TestResult,
    WorkItem,
)
from codeyard.schemas.model import RunState, TaskState, Usage
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, running_coordinator, wait_until, workers_answering

MAX_PAYLOAD = 48 * 1024
SPENT = Usage(calls=1, prompt_tokens=10)


async def test_a_task_too_large_for_its_work_items_is_refused_at_submission(bus: Bus) -> None:
    # Four criteria as long as criteria may be, of 2-byte characters: 160 KB.
    huge = TaskSpec(id="huge", title="x", acceptance=["\u00e9" * 20_000] * 4)
    submit = SubmitRun(run_id="r1", goal="g", plan=[TaskSpec(id="a", title="a"), huge])
    async with running_coordinator(Coordinator(bus, name="coord-size")):
        refused = await ask(bus, "submit", submit)

    assert isinstance(refused, ControlError), refused
    assert refused.field == "$.plan"
    assert "task 'huge' is 160" in refused.error
    assert refused.error.endswith(f"bytes as JSON; at most {MAX_TASK_BYTES}")


@pytest.fixture
async def small_messages(tmp_path: Path) -> AsyncIterator[Bus]:
    """A server taking messages of at most 48 KiB."""
    config = tmp_path / "nats.conf"
    config.write_text(
        f"max_payload: {MAX_PAYLOAD}\njetstream {{ store_dir: {str(tmp_path / 'js')!r} }}\n"
    )
    async with EmbeddedNats(tmp_path, config_file=config) as server:
        bus = await Bus.connect(server.url, name="test-small", topology=TEST_TOPOLOGY)
        await bus.setup()
        try:
            yield bus
        finally:
            await bus.close()


async def test_work_that_cannot_be_sent_comes_back_as_abandoned(small_messages: Bus) -> None:
    coordinator = Coordinator(small_messages, name="coord-small")
    task = TaskSpec(id="t1", title="t", description="\u00e9" * 20_000)
    item = CodeRequest(run_id="r1", task_id="t1", attempt=2, goal="\u00e9" * 10_000, task=task)

    sent = await coordinator._send_work(work_subject("coder"), item)

    assert sent is None
    follow_up = coordinator._inbox.get_nowait()
    assert isinstance(follow_up, FollowUp)
    assert follow_up.run_id == "r1"
    abandoned = follow_up.event
    assert isinstance(abandoned, WorkAbandoned)
    assert (abandoned.task_id, abandoned.attempt, abandoned.role) == ("t1", 2, "coder")
    assert abandoned.reason.startswith("its work item cannot be sent: a message of ")
    assert abandoned.reason.endswith(f"over the server's max_payload of {MAX_PAYLOAD} bytes")


async def test_an_output_too_big_for_its_tasks_record_fails_the_task(small_messages: Bus) -> None:
    """The coder's answer and the test request each fit in a message, but the task's record
    (spec, patch and summary together) would not: stored anyway, the step failed at every
    delivery of the answer, reloading every run each time, for good."""

    async def answer(item: WorkItem) -> Result:
        assert isinstance(item, CodeRequest)  # nothing after coding
        return CodeResult(
            patch=Patch(text="+" + "x" * 26_000 + "\n"), summary="s" * 18_000, usage=SPENT
        )

    task = TaskSpec(id="t1", title="t", description="d" * 6_000)
    coordinator = Coordinator(small_messages, name="coord-small")
    async with workers_answering(small_messages, answer), running_coordinator(coordinator):
        await ask(small_messages, "submit", SubmitRun(run_id="r1", goal="g", plan=[task]))
        run = await wait_until(small_messages, "r1", timeout=30)

    assert run.state is RunState.FAILED
    failed = run.tasks["t1"]
    assert failed.state is TaskState.FAILED
    assert failed.error.startswith("coder failed: its CodeResult would make the task's record")
    assert failed.patch is None  # not kept
    assert run.usage == SPENT


async def test_a_patch_too_large_for_the_servers_messages_fails_its_task_saying_so(
    small_messages: Bus,
) -> None:
    """A coder sends its patch inline whatever its size: one over the server's max_payload
    cannot be sent at all. Sent again it would be as large, so the task fails at once, its
    error saying the patch is too large and what to do, and its spend is counted."""
    patch = "+" + "x" * 60_000 + "\n"

    async def answer(item: WorkItem) -> Result:
        assert isinstance(item, CodeRequest)  # nothing after coding
        return CodeResult(patch=Patch(text=patch), usage=SPENT)

    coordinator = Coordinator(small_messages, name="coord-small")
    async with workers_answering(small_messages, answer), running_coordinator(coordinator):
        plan = [TaskSpec(id="t1", title="t")]
        await ask(small_messages, "submit", SubmitRun(run_id="r1", goal="g", plan=plan))
        run = await wait_until(small_messages, "r1", timeout=30)

    assert run.state is RunState.FAILED
    failed = run.tasks["t1"]
    assert (failed.state, failed.attempt, failed.patch) == (TaskState.FAILED, 1, None)
    assert failed.error.startswith(
        f"coder failed: CodeResult too big to send: its patch of {len(patch)} characters is "
        "too large for one message: the result is "
    )
    assert f"the server's max_payload of {MAX_PAYLOAD} bytes" in failed.error
    assert failed.error.endswith(
        "raise the NATS server's max_payload (up to 1048576 bytes, the most a codeyard message "
        "may be), or split the task into smaller ones"
    )
    assert run.usage == SPENT


async def test_on_a_server_taking_small_messages_every_output_is_measured(
    small_messages: Bus,
) -> None:
    """A 38 KB spec nearly fills a 48 KiB message: outputs too small to be measured on a
    server taking 1 MiB messages fill the rest."""

    async def answer(item: WorkItem) -> Result:
        if isinstance(item, CodeRequest):
            return CodeResult(patch=Patch(text="+" + "x" * 3_000 + "\n"), summary="s" * 2_000)
        assert isinstance(item, TestRequest)  # nothing after testing
        return TestResult(passed=True, output="o" * 5_000, usage=SPENT)

    task = TaskSpec(id="t1", title="t", description="d" * 19_000, acceptance=["a" * 19_000])
    coordinator = Coordinator(small_messages, name="coord-small")
    async with workers_answering(small_messages, answer), running_coordinator(coordinator):
        await ask(small_messages, "submit", SubmitRun(run_id="r1", goal="g", plan=[task]))
        run = await wait_until(small_messages, "r1", timeout=30)

    assert run.tasks["t1"].state is TaskState.FAILED
    assert run.tasks["t1"].error.startswith("tester failed: its TestResult would make the task")
