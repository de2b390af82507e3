"""A reviewer plugin as a worker's handler: everything about the bus stays out of the plugin."""

from __future__ import annotations

import inspect

import msgspec

from codeyard.agents.working_copy import PatchDoesNotApply
from codeyard.bus.subjects import check_role
from codeyard.bus.worker import GiveUp
from codeyard.cancellation import finish_in_thread
from codeyard.reviewers.protocol import ReviewerPlugin
from codeyard.schemas import Result, ReviewComment, ReviewRequest, ReviewResult, WorkItem
from codeyard.schemas.model import LONG_TEXT_CHARS, clip


class PluginHandler:
    """Calls `plugin.review` for each review request of `role` (`review.<name>`) and answers
    for it: the verdict is signed with the role, a patch that does not apply is a change
    request, and anything but a `ReviewResult` fails the work with a message saying so."""

    def __init__(self, plugin: ReviewerPlugin, role: str) -> None:
        self.plugin = plugin
        self.role = check_role(role)
        self._is_async = inspect.iscoroutinefunction(plugin.review)

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, ReviewRequest):
            raise GiveUp(f"reviewer {self.role} does not handle {type(item).__name__}")
        try:
            if self._is_async:
                verdict = await self.plugin.review(item)  # type: ignore[misc]
            else:
                # A withdrawal cannot stop the thread: the work's slot stays taken until it
                # returns, so no more reviews run at once than the worker's concurrency.
                verdict = await finish_in_thread(self.plugin.review, item)
        except PatchDoesNotApply as exc:
            text = f"the patch does not apply to the current head:\n{exc}"
            verdict = ReviewResult(approved=False, comments=[ReviewComment(text=text)])
        if not isinstance(verdict, ReviewResult):
            raise GiveUp(
                f"reviewer plugin {type(self.plugin).__name__} returned "
                f"{type(verdict).__name__}, not a ReviewResult"
            )
        # A comment over the wire's limit failed the whole task: cut, saying so, instead.
        comments = [
            msgspec.structs.replace(comment, text=clip(comment.text))
            if len(comment.text) > LONG_TEXT_CHARS
            else comment
            for comment in verdict.comments
        ]
        # the coordinator counts approvals by this name, whatever the plugin wrote there
        return msgspec.structs.replace(verdict, reviewer=self.role, comments=comments)
