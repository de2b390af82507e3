"""A plugin behind the worker: plain and async `review`, what it returns, and over a real bus."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import pytest

from codeyard.bus import Bus, GiveUp, PullWorker
from codeyard.bus.subjects import work_subject
from codeyard.reviewers import patched_checkout
from codeyard.reviewers.diff_lines import added_lines
from codeyard.reviewers.handler import PluginHandler
from codeyard.schemas import (
    CodeRequest,
    Patch,
    RepoRef,
    ReviewComment,
    ReviewRequest,
    ReviewResult,
    TaskSpec,
    WorkFailed,
)
from tests.agents.sample_repo import SAMPLE_FILES
from tests.bus.results import collect_results
from tests.bus.test_worker import SUBMISSION, serving, until, withdraw
from tests.reviewers.conftest import patch_of
from tests.reviewers.sample_plugins import (
    Approves,
    AsksAModel,
    AsyncNoTodos,
    ReadsCheckout,
    ReturnsTrue,
    WrappedAsync,
)

TASK = TaskSpec(id="t1", title="a change")


def request(patch: str = "", repo: Path | None = None) -> ReviewRequest:
    where = RepoRef(path=str(repo), snapshot=str(repo)) if repo else RepoRef()
    return ReviewRequest(
        run_id="r1", task_id="t1", attempt=1, task=TASK, patch=Patch(text=patch), repo=where
    )


async def test_a_plain_review_runs_and_its_verdict_is_signed_with_the_role() -> None:
    result = await PluginHandler(Approves(), "review.demo")(request())
    assert isinstance(result, ReviewResult)
    assert (result.reviewer, result.approved) == ("review.demo", True)


async def test_an_async_review_runs_on_the_loop() -> None:
    patch = "--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+x = 1  # TODO: name it\n"
    result = await PluginHandler(AsyncNoTodos(), "review.notodos")(request(patch))
    assert isinstance(result, ReviewResult)
    assert not result.approved
    assert [c.text for c in result.comments] == ["remove the TODO: x = 1  # TODO: name it"]


async def test_a_plain_review_that_returns_a_coroutine_is_awaited() -> None:
    """It failed the work: "returned coroutine, not a ReviewResult"."""
    patch = "--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+x = 1  # TODO: name it\n"
    result = await PluginHandler(WrappedAsync(), "review.wrapped")(request(patch))  # type: ignore[arg-type]
    assert isinstance(result, ReviewResult)
    assert not result.approved


async def test_patched_checkout_shows_the_change(sample_repo: Path) -> None:
    ops = SAMPLE_FILES["calc/ops.py"] + "\n\ndef mul(a: int, b: int) -> int:\n    return a * b\n"
    patch = patch_of(sample_repo, {"calc/ops.py": ops})
    result = await PluginHandler(ReadsCheckout(), "review.mul")(request(patch, sample_repo))
    assert isinstance(result, ReviewResult)
    assert result.approved
    assert "mul" not in (sample_repo / "calc" / "ops.py").read_text()  # the repo is untouched


def test_patched_checkout_has_the_testers_tests_too_unless_told(sample_repo: Path) -> None:
    """They are merged with the patch: a plugin running its tools over the change sees them."""
    ops = SAMPLE_FILES["calc/ops.py"] + "\n\ndef mul(a: int, b: int) -> int:\n    return a * b\n"
    tests = "from calc.ops import mul\n\n\ndef test_mul() -> None:\n    assert mul(2, 3) == 6\n"
    asked = msgspec.structs.replace(
        request(patch_of(sample_repo, {"calc/ops.py": ops}), sample_repo),
        tests=Patch(text=patch_of(sample_repo, {"tests/test_mul.py": tests})),
    )
    with patched_checkout(asked) as root:
        assert (root / "calc" / "ops.py").read_text() == ops
        assert (root / "tests" / "test_mul.py").read_text() == tests
    with patched_checkout(asked, tests=False) as root:  # where the patch's line numbers hold
        assert (root / "calc" / "ops.py").read_text() == ops
        assert not (root / "tests" / "test_mul.py").exists()


async def test_a_review_that_returns_something_else_fails_the_work_saying_so() -> None:
    with pytest.raises(GiveUp, match="ReturnsTrue returned bool, not a ReviewResult"):
        await PluginHandler(ReturnsTrue(), "review.x")(request())  # type: ignore[arg-type]


class QuotesTheWholeLog:
    """A review whose comment is longer than a comment may be on the wire (20,000 characters)."""

    def review(self, request: ReviewRequest) -> ReviewResult:
        return ReviewResult(approved=False, comments=[ReviewComment(text="x" * 50_000)])


async def test_a_comment_too_long_for_the_wire_is_cut_saying_so() -> None:
    """It made the answer invalid, and the task failed instead of going back to the coder."""
    result = await PluginHandler(QuotesTheWholeLog(), "review.log")(request())
    assert isinstance(result, ReviewResult)
    [comment] = result.comments
    assert len(comment.text) == 20_000
    assert comment.text.endswith(" [... 30000 more characters cut]")
    msgspec.json.decode(msgspec.json.encode(result), type=ReviewResult)  # valid on the wire


class CommentsEndlessly:
    """199 comments of 19,000 characters, one on a file name read from the disk with a lone
    surrogate: 3.8 MB of verdict."""

    def review(self, request: ReviewRequest) -> ReviewResult:
        comments = [ReviewComment(path="caf\udce9.py", text="y" * 19_000)]
        comments += [ReviewComment(text="x" * 19_000) for _ in range(198)]
        return ReviewResult(approved=False, comments=comments)


async def test_comments_too_many_to_send_are_cut_to_what_fits_and_counted() -> None:
    """The verdict was too big to send, and the work failed with it lost."""
    result = await PluginHandler(CommentsEndlessly(), "review.log")(request())
    assert isinstance(result, ReviewResult)
    assert not result.approved
    assert result.comments[0].path == "caf?.py"
    assert result.comments[-1].text.endswith("more comments, left out")
    assert sum(len(c.text) for c in result.comments) <= 201_000
    msgspec.json.decode(msgspec.json.encode(result), type=ReviewResult)  # valid on the wire


class ExitsLikeACommandLine:
    """Runs a tool as its command line would (pylint's `Run` without exit=False)."""

    def review(self, request: ReviewRequest) -> ReviewResult:
        raise SystemExit(2)


class ExitsOnTheLoop:
    async def review(self, request: ReviewRequest) -> ReviewResult:
        raise SystemExit(2)


@pytest.mark.parametrize("plugin", [ExitsLikeACommandLine(), ExitsOnTheLoop()])
async def test_a_review_that_exits_fails_the_work_not_the_worker(plugin: object) -> None:
    """SystemExit ended the worker; with status 2, `codeyard up` took it for a service refusing
    its configuration and stopped every service."""
    name = type(plugin).__name__
    with pytest.raises(GiveUp, match=rf"{name} ended its review with SystemExit\(2\)"):
        await PluginHandler(plugin, "review.lint")(request())  # type: ignore[arg-type]


async def test_other_work_is_refused() -> None:
    code = CodeRequest(goal="g", task=TASK)
    with pytest.raises(GiveUp, match="does not handle CodeRequest"):
        await PluginHandler(Approves(), "review.x")(code)


async def test_a_plugin_serves_its_role_over_the_bus(bus: Bus) -> None:
    stop = asyncio.Event()
    worker = PullWorker(bus, "review.demo", PluginHandler(Approves(), "review.demo"))
    serving = asyncio.create_task(worker.run(stop, grace=5))
    try:
        sent = request()
        await bus.publish(work_subject("review.demo"), sent)
        [result] = await collect_results(bus, 1)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)
    assert isinstance(result, ReviewResult)
    assert (result.run_id, result.task_id, result.attempt) == ("r1", "t1", 1)
    assert (result.reviewer, result.approved) == ("review.demo", True)


async def test_what_a_plugin_spent_and_its_model_reach_the_coordinator(bus: Bus) -> None:
    stop = asyncio.Event()
    worker = PullWorker(bus, "review.llm", PluginHandler(AsksAModel(), "review.llm"))
    serving = asyncio.create_task(worker.run(stop, grace=5))
    try:
        await bus.publish(work_subject("review.llm"), request("--- a/x\n+++ b/x\n"))
        [reviewed] = await collect_results(bus, 1)
        await bus.publish(work_subject("review.llm"), request())  # GiveUp: nothing to review
        [failed] = await collect_results(bus, 1)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)
    assert isinstance(reviewed, ReviewResult)
    assert reviewed.approved
    assert isinstance(failed, WorkFailed)
    assert failed.reason.endswith("nothing to review")
    for answer in (reviewed, failed):
        assert (answer.usage, answer.model) == (AsksAModel.SPENT, "tiny-reviewer-1")


class Blocking:
    """A plain review that waits for `release`, counting how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.release = threading.Event()

    def review(self, request: ReviewRequest) -> ReviewResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self.lock:
            self.running -= 1
        return ReviewResult(approved=True)


async def test_a_withdrawn_plain_review_holds_its_slot_until_it_returns(bus: Bus) -> None:
    """A thread cannot be stopped: withdrawn, a plain review ran on while its slot went to the
    next item, so more reviews ran at once than `--concurrency` promises."""
    role, plugin = "review.demo", Blocking()
    for run_id in ("r1", "r2"):
        item = msgspec.structs.replace(request(), run_id=run_id, trace_id=SUBMISSION)
        await bus.publish(work_subject(role), item)
    try:
        async with serving(PullWorker(bus, role, PluginHandler(plugin, role), concurrency=1)):
            await until(lambda: plugin.running == 1)
            await withdraw(bus, "t1", "r1")
            await asyncio.sleep(1)  # time for a second review to start, were the slot free
            assert plugin.most == 1
            plugin.release.set()
            [answered] = await collect_results(bus, 1)
    finally:
        plugin.release.set()
    assert (answered.run_id, plugin.most) == ("r2", 1)


def test_added_lines_follow_the_hunks() -> None:
    patch = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n"
        "@@ -1,3 +1,4 @@\n a\n-b\n+c\n+d\n e\n"
        "@@ -10 +11,2 @@\n+new\n ten\n"
        'diff --git "a/caf\\303\\251.py" "b/caf\\303\\251.py"\nnew file mode 100644\n'
        '--- /dev/null\n+++ "b/caf\\303\\251.py"\n@@ -0,0 +1,2 @@\n+import os\n++++ not a header\n'
        "diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n"
        "--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    )
    assert added_lines(patch) == {"x.py": {2, 3, 11}, "café.py": {1, 2}}
