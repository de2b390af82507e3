"""The contract of a reviewer plugin: one method, a review request in, a verdict out.

A plugin never sees the bus. The worker that runs it (`codeyard worker review --plugin ...`)
pulls the work, heartbeats while `review` runs, fills in the envelope of the answer (run, task,
attempt, ids, and `reviewer` = the plugin's role) and acks only once the answer is stored, so a
plugin that crashes or is killed just gets the same request again later.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, runtime_checkable

from codeyard.schemas import ReviewRequest, ReviewResult


@runtime_checkable
class ReviewerPlugin(Protocol):
    """What a reviewer plugin implements. The class is created once per worker process with no
    arguments, then `review` is called for every request (up to `--concurrency` at once).

    `review` may be `async def` (it runs on the worker's event loop, so it must not block: use
    `asyncio.create_subprocess_exec`, `asyncio.to_thread`...) or a plain `def` (it runs in a
    thread, so blocking calls are fine).

    `request` has `task` (the task spec: title, description, acceptance criteria, files),
    `patch.text` (the change, a unified diff), `test_output` (what the tester saw) and `repo`
    (where the code is; `patched_checkout(request)` gives a private checkout with the patch
    applied).

    Return `ReviewResult(approved=True)`, or `ReviewResult(approved=False, comments=[...])`
    with one `ReviewComment(path=..., line=..., text=...)` per thing the coder should change:
    the comments go back to the coder as feedback for its next attempt. Only `approved`,
    `comments` and `usage` are read; the envelope fields are filled in by the worker.

    Errors: raise `codeyard.bus.worker.GiveUp(reason)` when the request can never be reviewed
    (the task fails with the reason), `codeyard.bus.worker.RetryLater(reason, delay)` when it
    cannot be reviewed now; any other exception is retried a few times, then fails the task.
    """

    def review(self, request: ReviewRequest) -> ReviewResult | Awaitable[ReviewResult]: ...
