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
