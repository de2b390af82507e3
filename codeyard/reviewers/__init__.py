"""Reviewer plugins: what a plugin author imports.

    from codeyard.reviewers import ReviewComment, ReviewRequest, ReviewResult, patched_checkout

    class NoTodos:
        def review(self, request: ReviewRequest) -> ReviewResult:
            with patched_checkout(request) as root:
                ...

Run it with `codeyard worker review --plugin mymodule:NoTodos --name notodos`; see the README,
"Write your own reviewer". `codeyard.reviewers.static` is a complete example.
"""

from codeyard.bus.worker import GiveUp, RetryLater
from codeyard.reviewers.checkout import patched_checkout
from codeyard.reviewers.diff_lines import added_lines
from codeyard.reviewers.protocol import ReviewerPlugin
from codeyard.schemas import ReviewComment, ReviewRequest, ReviewResult, Usage

__all__ = [
    "GiveUp",
    "RetryLater",
    "ReviewComment",
    "ReviewRequest",
    "ReviewResult",
    "ReviewerPlugin",
    "Usage",
    "added_lines",
    "patched_checkout",
]
