"""Work item ids: the same work keeps its id (a new leader's re-send is dropped as a copy),
another submission of the same run id gets new ones."""

from __future__ import annotations

import msgspec

from codeyard.coordinator import Dispatch
from codeyard.coordinator.work_items import derived_id, work_item
from codeyard.schemas.model import Task
from tests.coordinator.plans import new_run, spec


def coder_work_id(submission: str, dispatches: int = 1) -> str:
    run = msgspec.structs.replace(new_run(), submission=submission)
    run.tasks["x"] = Task(spec=spec("x"), dispatches=dispatches)
    return work_item(run, Dispatch("coder", "x", 1)).msg_id


def test_the_same_work_of_the_same_submission_keeps_its_id() -> None:
    assert coder_work_id("s1") == coder_work_id("s1")
    assert coder_work_id("s1", dispatches=2) != coder_work_id("s1")  # sent again on purpose


def test_a_run_submitted_again_sends_its_work_under_new_ids() -> None:
    """The first submission was cut before its run was stored: its work was answered, and the
    answers found no run. The same work under the same ids would be dropped as copies."""
    assert coder_work_id("s1") != coder_work_id("s2")


def test_work_of_a_run_stored_by_an_older_version_keeps_the_id_that_version_gave_it() -> None:
    """Runs without a submission token were stored before there was one: an upgraded leader
    re-sending their work must produce the ids the old leader sent it under."""
    assert coder_work_id("") == derived_id("run1", "x", "coder", 1, 1)
