"""Reviewer plugin classes for the loading and handler tests, good and bad."""

from __future__ import annotations

import asyncio
import threading

from codeyard.reviewers import (
    GiveUp,
    ReviewComment,
    ReviewRequest,
    ReviewResult,
    Usage,
    patched_checkout,
)


class Approves:
    """A plain `def review`: it runs in a thread."""

    def review(self, request: ReviewRequest) -> ReviewResult:
        return ReviewResult(reviewer="review", approved=True)


class AsyncNoTodos:
    """An `async def review`: asks to remove every TODO the patch adds."""

    async def review(self, request: ReviewRequest) -> ReviewResult:
        await asyncio.sleep(0)
        comments = [
            ReviewComment(text=f"remove the TODO: {line[1:].strip()}")
            for line in request.patch.text.splitlines()
            if line.startswith("+") and not line.startswith("+++") and "TODO" in line
        ]
        return ReviewResult(approved=not comments, comments=comments)


class ReadsCheckout:
    """Looks at the patched files through `patched_checkout`."""

    def review(self, request: ReviewRequest) -> ReviewResult:
        with patched_checkout(request) as root:
            text = (root / "calc" / "ops.py").read_text()
        return ReviewResult(approved="mul" in text)


class AsksAModel:
    """A reviewer that calls an LLM says what it spent and which model answered: the run counts
    the spend against its budget and the report names the model."""

    SPENT = Usage(calls=1, prompt_tokens=120, completion_tokens=30, cost_usd=0.002)

    def review(self, request: ReviewRequest) -> ReviewResult:
        if not request.patch.text:
            raise GiveUp("nothing to review", usage=self.SPENT, model="tiny-reviewer-1")
        return ReviewResult(approved=True, usage=self.SPENT, model="tiny-reviewer-1")


class ReturnsTrue:
    def review(self, request: ReviewRequest) -> bool:
        return True


class NoReview:
    def check(self, request: ReviewRequest) -> ReviewResult:
        return ReviewResult(approved=True)


class TakesTwo:
    def review(self, request: ReviewRequest, strict: bool) -> ReviewResult:
        return ReviewResult(approved=strict)


class StaticReview:
    """`review` as a static method: called with the request alone, as it should be."""

    @staticmethod
    def review(request: ReviewRequest) -> ReviewResult:
        return ReviewResult(approved=True)


class ClassReview:
    @classmethod
    def review(cls, request: ReviewRequest) -> ReviewResult:
        return ReviewResult(approved=True)


class StaticTakesTwo:
    @staticmethod
    def review(request: ReviewRequest, strict: bool) -> ReviewResult:
        return ReviewResult(approved=strict)


class NeedsConfig:
    def __init__(self, config: str) -> None:
        self.config = config

    def review(self, request: ReviewRequest) -> ReviewResult:
        return ReviewResult(approved=True)


NOT_A_CLASS = Approves()


class MeetsTwelve:
    """Approves only once 12 reviews run at once (a barrier they all wait at): a plugin worker
    with --concurrency 12 that runs fewer in its threads fails them."""

    barrier = threading.Barrier(12)

    def review(self, request: ReviewRequest) -> ReviewResult:
        try:
            self.barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            return ReviewResult(approved=False, comments=[ReviewComment(text="fewer at once")])
        return ReviewResult(approved=True)


class WrappedAsync:
    """An async review behind a plain callable (a decorator's wrapper, say): it returns a
    coroutine."""

    def __init__(self) -> None:
        self.review = self._wrapper

    def _wrapper(self, request: ReviewRequest) -> object:
        return AsyncNoTodos().review(request)
