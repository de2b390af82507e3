"""Text for the Context placeholders of the prompt templates, built from wire types.

One way of writing a task, feedback or a file for every role, so the prompts read alike and the
tests of one role's prompt hold for the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from codeyard.schemas import Feedback, TaskSpec

NONE = "(none)"

_BACKTICK_RUN = re.compile(r"`{3,}")


def bullet_list(items: Sequence[str]) -> str:
    """`- item` lines, or `(none)`: an empty placeholder would read as a broken prompt."""
    return "\n".join(f"- {item}" for item in items) if items else NONE


def fenced(text: str, language: str = "") -> str:
    """`text` in a markdown code fence longer than any backtick run inside it, so file content
    cannot close the fence and spill into the instructions around it."""
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=2)
    fence = "`" * (longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{fence}{language}\n{body}{fence}"


def describe_task(task: TaskSpec) -> str:
    lines = [f"id: {task.id}", f"title: {task.title}"]
    if task.description:
        lines += ["", task.description]
    lines += ["", "Acceptance criteria:", bullet_list(task.acceptance)]
    lines += ["", "Files expected to change:", bullet_list(task.files)]
    if task.deps:
        lines += ["", "Builds on the already merged tasks: " + ", ".join(task.deps)]
    return "\n".join(lines)


def describe_feedback(feedback: Sequence[Feedback]) -> str:
    """Earlier attempts' feedback, oldest first, or `(none)`."""
    if not feedback:
        return NONE
    return "\n\n".join(
        f"### Attempt {item.attempt}: {item.kind.value.replace('_', ' ')}\n\n{fenced(item.text)}"
        for item in feedback
    )


def quote_files(files: Mapping[str, str]) -> str:
    """Each file under its path, fenced, in the order given; `(none)` when there are none."""
    if not files:
        return NONE
    return "\n\n".join(f"### {path}\n\n{fenced(content)}" for path, content in files.items())
