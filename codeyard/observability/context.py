"""The run and task a log line is about, carried by contextvars.

Set around each work item's handler (`PullWorker`) and while the coordinator applies a result,
so every line logged meanwhile, however deep, names them without being passed them. Each
asyncio task copies the context it was created in: a handler's own tasks inherit its ids.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkContext:
    run_id: str
    task_id: str
    attempt: int


_current: ContextVar[WorkContext | None] = ContextVar("codeyard_work", default=None)


def current_work() -> WorkContext | None:
    return _current.get()


class WorkScope:
    """`working_on`'s context manager: a class, as the coordinator enters one per result (a
    generator-based one cost five times as much)."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: WorkContext) -> None:
        self._context = context
        self._token: Token[WorkContext | None] | None = None

    def __enter__(self) -> WorkContext:
        self._token = _current.set(self._context)
        return self._context

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


def working_on(run_id: str, task_id: str, attempt: int) -> WorkScope:
    """The work log lines name while in the `with` block."""
    return WorkScope(WorkContext(run_id, task_id, attempt))


def enter_work(run_id: str, task_id: str, attempt: int) -> None:
    """`working_on` for the rest of the current asyncio task. Every task runs in its own copy
    of the context, so this ends with the task and leaks into nothing else."""
    _current.set(WorkContext(run_id, task_id, attempt))
