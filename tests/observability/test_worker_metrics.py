"""A worker serving a real bus counts what it handles and fails, times its handler, and names
the run and task of every log line logged while handling an item."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from codeyard.bus import Bus, GiveUp, PullWorker
from codeyard.bus.subjects import work_subject
from codeyard.observability.log_format import JsonFormatter, set_process_name
from codeyard.schemas import CodeResult, Patch, Result, ReviewRequest, TaskSpec, WorkItem
from tests.bus.results import collect_results
from tests.bus.test_worker import serving
from tests.observability.samples import Delta

ROLE = "review.metrics"  # a role of its own: no other test moves its series
log = logging.getLogger("tests.observability.handler")


def review_request(task_id: str) -> ReviewRequest:
    return ReviewRequest(
        run_id="run-m",
        task_id=task_id,
        attempt=2,
        task=TaskSpec(id=task_id, title=task_id),
        patch=Patch(text=""),
    )


async def handle(item: WorkItem) -> Result:
    log.info("reviewing %s", item.task_id)
    if item.task_id == "bad":
        raise GiveUp("this one can never be reviewed")
    return CodeResult(patch=Patch(text="x"))


class Lines(logging.Handler):
    """Keeps every record formatted as the JSON log would have it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    lines = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    set_process_name("worker-test")
    try:
        yield lines
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
        set_process_name("codeyard")


async def test_handled_and_failed_items_are_counted_and_timed(bus: Bus, json_lines: Lines) -> None:
    labels = {"role": ROLE}
    delta = Delta(
        ("codeyard_work_items_handled_total", labels),
        ("codeyard_work_items_failed_total", labels),
        ("codeyard_handler_duration_seconds_count", labels | {"outcome": "ok"}),
        ("codeyard_handler_duration_seconds_count", labels | {"outcome": "failed"}),
    )
    for task_id in ("a", "b", "bad"):
        await bus.publish(work_subject(ROLE), review_request(task_id))
    async with serving(PullWorker(bus, ROLE, handle, concurrency=2)):
        await collect_results(bus, 3)

    assert delta("codeyard_work_items_handled_total", **labels) == 2
    assert delta("codeyard_work_items_failed_total", **labels) == 1
    assert delta("codeyard_handler_duration_seconds_count", **labels, outcome="ok") == 2
    assert delta("codeyard_handler_duration_seconds_count", **labels, outcome="failed") == 1

    records = [json.loads(line) for line in json_lines.lines]
    handled = [r for r in records if r["logger"] == "tests.observability.handler"]
    assert sorted(r["message"] for r in handled) == ["reviewing a", "reviewing b", "reviewing bad"]
    for record in handled:
        assert record["message"] == f"reviewing {record['task_id']}"
        assert (record["run_id"], record["attempt"]) == ("run-m", 2)
        assert record["process"] == "worker-test"
        assert record["level"] == "INFO"
        assert record["ts"].endswith("+00:00")
