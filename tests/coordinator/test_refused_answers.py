"""An answer the coordinator cannot take (not a result it can read, or one that claims another
role's work) fails the work it answers, saying why. It was acked and dropped, so the task
waited for ever, with nothing shown but a log line: what a reviewer written in another
language, answering with raw JSON, met for a missing `reviewer` field."""

from __future__ import annotations

import asyncio
import json

import pytest

from codeyard.bus import Bus
from codeyard.bus.subjects import consumer_name, result_subject, work_subject
from codeyard.coordinator.service import Coordinator
from codeyard.coordinator.work_items import derived_id
from codeyard.schemas import (
    Result,
    ReviewRequest,
    TaskSpec,
    TaskState,
    TaskStatesChanged,
    UndecodableWork,
    WorkItem,
)
from tests.coordinator.harness import (
    run_events,
    running_coordinator,
    scripted_coder,
    status,
    submit,
    wait_for_task,
    workers_of,
)
from tests.coordinator.test_poisoned_results import dead_letters


def foreign_reviewer(bus: Bus, answer: dict[str, object] | bytes) -> object:
    """A reviewer that publishes `answer` (with the envelope of the request) as raw JSON, as
    one written in another language would, and then never answers otherwise. An answer given
    as bytes is the rest of the JSON object, as sent: what `json.dumps` would not write."""

    async def review(item: WorkItem) -> Result:
        assert isinstance(item, ReviewRequest)
        envelope = {"run_id": item.run_id, "task_id": item.task_id, "attempt": item.attempt}
        if isinstance(answer, bytes):
            payload = json.dumps(envelope).encode()[:-1] + b", " + answer + b"}"
        else:
            payload = json.dumps(envelope | answer).encode()
        await bus.js.publish(result_subject("review.lint"), payload)
        await asyncio.Event().wait()
        raise AssertionError("never answers")

    return review


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            {"type": "ReviewResult", "approved": True},  # no reviewer: "review" by default
            "review.lint failed: its answer was refused: a ReviewResult of 'review' came from "
            "'review.lint'",
        ),
        (
            {"type": "ReviewResult", "reviewer": "review.lint", "approved": "yes"},
            "review.lint failed: its answer could not be read: Expected `bool`, got `str`",
        ),
        (
            b'"type": "ReviewResult", "reviewer": "review.lint", "approved": true, "model": "\xff"',
            "review.lint failed: its answer could not be read: not valid UTF-8",
        ),
    ],
    ids=["another-reviewer", "unreadable", "not-utf8"],
)
async def test_an_answer_that_cannot_be_taken_fails_its_work_saying_why(
    bus: Bus, answer: dict[str, object] | bytes, reason: str
) -> None:
    plan = [TaskSpec(id="a", title="models", reviewers=["review.lint"])]
    coder = scripted_coder()
    handlers = {"coder": coder, "tester": coder, "review.lint": foreign_reviewer(bus, answer)}
    async with (
        running_coordinator(Coordinator(bus, name="coord-refusing")),
        workers_of(bus, handlers),  # type: ignore[arg-type]
    ):
        await submit(bus, plan, run_id="r1")
        run = await wait_for_task(bus, "r1", "a", TaskState.FAILED)
    assert run.tasks["a"].error.startswith(reason), run.tasks["a"].error


async def test_a_batch_with_one_unreadable_result_takes_the_others(bus: Bus) -> None:
    """A batch from a newer reviewer, one of whose results is of a type this coordinator does
    not know: the readable result is applied, the other fails its work, saying why."""
    plan = [TaskSpec(id=task, title=task, reviewers=["review.lint"]) for task in ("a", "b")]
    asked: dict[str, ReviewRequest] = {}
    both_asked = asyncio.Event()

    async def review(item: WorkItem) -> Result:
        assert isinstance(item, ReviewRequest)
        asked[item.task_id] = item
        if len(asked) < 2:
            await asyncio.Event().wait()
        both_asked.set()
        results: list[dict[str, object]] = [
            {"type": "ReviewResult", "reviewer": "review.lint", "approved": True},
            {"type": "ReviewVerdict", "reviewer": "review.lint", "verdict": "approve"},
        ]
        batch = {
            "type": "ResultBatch",
            "results": [
                {"run_id": request.run_id, "task_id": request.task_id, "attempt": request.attempt}
                | result
                for request, result in zip(asked.values(), results, strict=True)
            ],
        }
        await bus.js.publish(result_subject("review.lint"), json.dumps(batch).encode())
        await asyncio.Event().wait()
        raise AssertionError("never answers")

    coder = scripted_coder()
    handlers = {"coder": coder, "tester": coder, "review.lint": review}
    async with (
        running_coordinator(Coordinator(bus, name="coord-splitting")),
        workers_of(bus, handlers, concurrency=2),  # both reviews out at once
    ):
        await submit(bus, plan, run_id="r2")
        await both_asked.wait()
        first, second = asked
        failed = await wait_for_task(bus, "r2", second, TaskState.FAILED)
        reviewed = await moves_from(bus, "r2", first, TaskState.REVIEWING)
    assert failed.tasks[second].error.startswith(
        "review.lint failed: its answer could not be read: unknown message type"
    ), failed.tasks[second].error
    # (the failure then ends the run, cancelling the first task before it merges)
    assert reviewed[:1] == [TaskState.GATED], reviewed


async def moves_from(bus: Bus, run_id: str, task_id: str, state: TaskState) -> list[TaskState]:
    """The states the task moved to from `state`, by the run's events (published after the step
    that the status shows: waited for up to 10 s)."""
    for _ in range(100):
        moves = [
            change.state
            for event in await run_events(bus, run_id)
            if isinstance(event, TaskStatesChanged)
            for change in event.changes
            if change.task_id == task_id and change.previous is state
        ]
        if moves:
            return moves
        await asyncio.sleep(0.1)
    return []


async def test_an_answer_too_deeply_nested_to_read_anything_of_is_set_aside(bus: Bus) -> None:
    """Which work it answers cannot be read either: it is filed as a dead letter, and the
    coordinator goes on leading (the nesting once escaped as a `RecursionError`)."""
    nested = b'"type": "ReviewResult", "approved": true, "x": ' + b"[" * 50_000 + b"]" * 50_000
    plan = [TaskSpec(id="a", title="models", reviewers=["review.lint"])]
    coder = scripted_coder()
    handlers = {"coder": coder, "tester": coder, "review.lint": foreign_reviewer(bus, nested)}
    coordinator = Coordinator(bus, name="coord-nested")
    async with running_coordinator(coordinator), workers_of(bus, handlers):  # type: ignore[arg-type]
        await submit(bus, plan, run_id="r3")
        letters = await dead_letters(bus)
        assert [letter.error for letter in letters] == ["nested too deeply to decode (at $)"]
        run = await status(bus, "r3")
    assert run.tasks["a"].state is TaskState.REVIEWING


async def test_work_a_worker_could_not_decode_is_filed_as_the_coordinator_sees_fit(
    bus: Bus,
) -> None:
    """A worker hands undecodable work to the coordinator, which files the dead letter. What
    a worker says of it is not taken on trust: the subject and consumer are those of the role
    whose result subject it came on, a run not open here is not written to, and the event's
    id is derived from the report's, so that a report cannot take the id of an event to come
    and have that one dropped as a copy."""
    async with running_coordinator(Coordinator(bus, name="coord-undecodable")):
        await submit(bus, [TaskSpec(id="a", title="a")], run_id="r-open")  # nobody codes it
        reports = [
            UndecodableWork(
                run_id=run_id, error="malformed JSON", payload="{", payload_bytes=1, msg_id=msg_id
            )
            for run_id, msg_id in (("r-open", "report1"), ("r-elsewhere", "report2"))
        ]
        for report in reports:
            await bus.publish(result_subject("coder"), report)
        [in_run] = await dead_letters(bus, "r-open")
        [unrouted] = await dead_letters(bus)
    for letter, report in zip((in_run, unrouted), reports, strict=True):
        assert (letter.subject, letter.consumer) == (work_subject("coder"), consumer_name("coder"))
        assert (letter.error, letter.payload, letter.payload_bytes) == ("malformed JSON", "{", 1)
        assert letter.msg_id == derived_id("undecodable", "coder", report.msg_id) != report.msg_id
    assert (in_run.run_id, unrouted.run_id) == ("r-open", "")
