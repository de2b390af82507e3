"""The run and task a log line is about, carried by contextvars.

Set around each work item's handler (`PullWorker`) and while the coordinator applies a result,
so every line logged meanwhile, however deep, names them without being passed them. Each
asyncio task copies the context it was created in: a handler's own tasks inherit its ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkContext:
    run_id: str
    task_id: str
    attempt: int


_current: ContextVar[WorkContext | None] = ContextVar("codeyard_work", default=None)


def current_work() -> WorkContext | None:
    return _current.get()


@contextlib.contextmanager
def working_on(run_id: str, task_id: str, attempt: int) -> Iterator[WorkContext]:
    context = WorkContext(run_id, task_id, attempt)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def enter_work(run_id: str, task_id: str, attempt: int) -> None:
    """`working_on` for the rest of the current asyncio task. Every task runs in its own copy
    of the context, so this ends with the task and leaks into nothing else."""
    _current.set(WorkContext(run_id, task_id, attempt))
