"""An answer the coordinator cannot take (not a result it can read, or one that claims another
role's work) fails the work it answers, saying why. It was acked and dropped, so the task
waited for ever, with nothing shown but a log line: what a reviewer written in another
language, answering with raw JSON, met for a missing `reviewer` field."""

from __future__ import annotations

import asyncio
import json

import pytest

from codeyard.bus import Bus
from codeyard.bus.subjects import result_subject
from codeyard.coordinator.service import Coordinator
from codeyard.schemas import Result, ReviewRequest, TaskSpec, TaskState, WorkItem
from tests.coordinator.harness import (
    running_coordinator,
    scripted_coder,
    submit,
    wait_for_task,
    workers_of,
)


def foreign_reviewer(bus: Bus, answer: dict[str, object]) -> object:
    """A reviewer that publishes `answer` (with the envelope of the request) as raw JSON, as
    one written in another language would, and then never answers otherwise."""

    async def review(item: WorkItem) -> Result:
        assert isinstance(item, ReviewRequest)
        envelope = {"run_id": item.run_id, "task_id": item.task_id, "attempt": item.attempt}
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
    ],
    ids=["another-reviewer", "unreadable"],
)
async def test_an_answer_that_cannot_be_taken_fails_its_work_saying_why(
    bus: Bus, answer: dict[str, object], reason: str
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
        workers_of(bus, handlers),
    ):
        await submit(bus, plan, run_id="r2")
        await both_asked.wait()
        first, second = asked
        done = await wait_for_task(bus, "r2", first, TaskState.MERGED)
        failed = await wait_for_task(bus, "r2", second, TaskState.FAILED)
    assert done.tasks[first].state is TaskState.MERGED
    assert failed.tasks[second].error.startswith(
        "review.lint failed: its answer could not be read: unknown message type"
    ), failed.tasks[second].error
