"""A reviewer plugin as a worker's handler: everything about the bus stays out of the plugin."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

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

    def _review(self, item: ReviewRequest) -> object:
        """The plain `review`, in its thread: a SystemExit raised there would reach the event
        loop through the thread's future, and end the worker."""
        try:
            return self.plugin.review(item)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise self._exited(exc) from None

    def _exited(self, exc: BaseException) -> GiveUp:
        # A tool run as its command line runs (pylint's `Run` without exit=False, argparse on
        # bad arguments) ends the process: the worker stopped, and with exit status 2,
        # `codeyard up` took it for bad configuration and stopped every service.
        return GiveUp(
            f"reviewer plugin {type(self.plugin).__name__} ended its review with "
            f"{type(exc).__name__}({exc}): a review must return a ReviewResult"
        )

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, ReviewRequest):
            raise GiveUp(f"reviewer {self.role} does not handle {type(item).__name__}")
        try:
            if self._is_async:
                verdict = await self.plugin.review(item)  # type: ignore[misc]
            else:
                # A withdrawal cannot stop the thread: the work's slot stays taken until it
                # returns, so no more reviews run at once than the worker's concurrency.
                verdict = await finish_in_thread(self._review, item)
                if inspect.isawaitable(verdict):  # an async review behind a plain wrapper
                    verdict = await verdict
        except PatchDoesNotApply as exc:
            text = f"the patch does not apply to the current head:\n{exc}"
            verdict = ReviewResult(approved=False, comments=[ReviewComment(text=text)])
        except (SystemExit, KeyboardInterrupt) as exc:
            raise self._exited(exc) from None
        if not isinstance(verdict, ReviewResult):
            raise GiveUp(
                f"reviewer plugin {type(self.plugin).__name__} returned "
                f"{type(verdict).__name__}, not a ReviewResult"
            )
        # the coordinator counts approvals by this name, whatever the plugin wrote there
        return msgspec.structs.replace(
            verdict, reviewer=self.role, comments=sendable_comments(verdict.comments)
        )


# What of a plugin's comments goes back: the first MAX_COMMENTS, and no more text than
# COMMENTS_CHARS in all (a verdict of 199 comments of 19,000 characters was too big to send,
# and the work failed with the verdict lost).
MAX_COMMENTS = 50
COMMENTS_CHARS = 200_000


def sendable_comments(comments: Sequence[ReviewComment]) -> list[ReviewComment]:
    """`comments` as a result can carry them: each text and path cut to the wire's limits and
    made valid UTF-8 (a file name read from the disk may hold a lone surrogate), as many as
    fit, and a last one counting those left out."""
    kept: list[ReviewComment] = []
    room = COMMENTS_CHARS
    for comment in comments:
        if len(kept) == MAX_COMMENTS or room < 200:  # (200: a comment's worth, cut marker and all)
            break
        text = clip(comment.text, min(LONG_TEXT_CHARS, room))
        kept.append(msgspec.structs.replace(comment, text=text, path=clip(comment.path)))
        room -= len(text)
    if left := len(comments) - len(kept):
        kept.append(ReviewComment(text=f"... and {left} more comments, left out"))
    return kept
