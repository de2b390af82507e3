"""`patched_checkout`: a private checkout of a review request's repository with its patch (and
the tester's tests, merged with it) applied, for plugins that want to look at (or run tools
over) the changed code."""

from __future__ import annotations

from pathlib import Path

from codeyard.agents.working_copy import WorkingCopy, apply_patch
from codeyard.bus.worker import GiveUp
from codeyard.schemas import ReviewRequest
from codeyard.workspace.patch_store import by_reference


def patched_checkout(request: ReviewRequest, *, tests: bool = True) -> PatchedCheckout:
    """The repository at its current head with the request's patch applied, then the tests the
    tester wrote (`request.tests`: they are merged with the patch) unless `tests` is False, in a
    temporary directory that is removed on exit. The lines `added_lines(request.patch.text)`
    names are where it says only without the tests: the tester may add to the coder's files.
    Usable as `with` in a plain `def review` or as `async with` in an `async def review` (the
    git work then runs in a thread; a plain `with` on the event loop is refused, as the copy
    would stall it).

    Raises `PatchDoesNotApply` when the patch does not apply; the plugin worker answers that
    with a change request, so plugins may let it propagate. Raises `GiveUp` when the request
    names no repository on this machine's disk.
    """
    return PatchedCheckout(request, tests=tests)


class PatchedCheckout(WorkingCopy):
    """See `patched_checkout`."""

    NAME = "patched_checkout"

    def __init__(self, request: ReviewRequest, *, tests: bool = True) -> None:
        if by_reference(request.patch):
            raise GiveUp("patches kept in the object store are not supported by plugins yet")
        super().__init__(request.repo)
        added = request.tests.text if tests and request.tests else ""
        self._patches = [request.patch.text, added]

    def _enter(self) -> Path:
        root = super()._enter()
        try:
            for patch in self._patches:
                apply_patch(root, patch)
        except BaseException:
            self._stack.close()  # the checkout goes: nobody exits what was never entered
            raise
        return root
