"""`patched_checkout`: a private checkout of a review request's repository with its patch
applied, for plugins that want to look at (or run tools over) the changed code."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from codeyard.agents.working_copy import apply_patch, working_copy
from codeyard.bus.worker import GiveUp
from codeyard.schemas import ReviewRequest
from codeyard.workspace.patch_store import by_reference


def patched_checkout(request: ReviewRequest) -> PatchedCheckout:
    """The repository at its current head with the request's patch applied, in a temporary
    directory that is removed on exit. Usable as `with` (in a plain `def review`) or as
    `async with` (in an `async def review`: the git work then runs in a thread).

    Raises `PatchDoesNotApply` when the patch does not apply; the plugin worker answers that
    with a change request, so plugins may let it propagate. Raises `GiveUp` when the request
    names no repository on this machine's disk.
    """
    return PatchedCheckout(request)


class PatchedCheckout:
    """See `patched_checkout`."""

    def __init__(self, request: ReviewRequest) -> None:
        if by_reference(request.patch):
            raise GiveUp("patches kept in the object store are not supported by plugins yet")
        self._request = request
        self._stack = ExitStack()

    def __enter__(self) -> Path:
        with ExitStack() as stack:
            root = stack.enter_context(working_copy(self._request.repo))
            apply_patch(root, self._request.patch.text)
            self._stack = stack.pop_all()  # keep the checkout until __exit__
        return root

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stack.__exit__(kind, error, trace)

    async def __aenter__(self) -> Path:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.__exit__, kind, error, trace)
