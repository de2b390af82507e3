"""What each role's LLM call must return, as pydantic models asked for through a forced tool call.

The models' JSON Schema is the tool's parameters, so class docstrings and field descriptions are
written for the model (short, imperative); notes for developers are comments. Constraints the
schema can express (id pattern, lengths) are in it, which lets grammar-constrained local models
produce valid values in the first place; what it cannot (unique ids, known deps, no cycles) is
checked in `codeyard.agents.plan_check`.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from codeyard.schemas import ReviewComment, TaskSpec
from codeyard.schemas.envelope import ID_PATTERN

# The wire limits of TaskSpec / ReviewComment text (ShortText, LongText in codeyard.schemas).
SHORT_TEXT = 200
LONG_TEXT = 20_000
# Edits in one answer: far more than one task's commit needs, few enough that checking and
# applying them stays quick whatever a model sends.
MAX_EDITS = 200
# Bounds of every other list an answer holds, as far above real ones: unbounded, an answer of
# 2 million characters of empty tasks gave 4 million validation errors, a minute of the
# worker's event loop (its heartbeats with it) and 4.7 GB to describe them.
MAX_TASKS = 500
MAX_LIST = 200

TaskId = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits, - and _")]
RepoPath = Annotated[
    str,
    Field(min_length=1, description="relative to the repository root, e.g. src/app/main.py"),
]


class _Output(BaseModel):
    # `forbid` puts `additionalProperties: false` in the schema: a model may not invent fields.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- planner ----------------------------------------------------------------------------------


class PlannedTask(_Output):
    """One task of the plan, small enough for one commit."""

    id: TaskId = Field(description="short unique slug, e.g. add-user-model")
    title: str = Field(min_length=1, max_length=SHORT_TEXT, description="one line")
    description: str = Field(max_length=LONG_TEXT, description="what to change and why")
    acceptance: list[Annotated[str, Field(max_length=LONG_TEXT)]] = Field(
        max_length=MAX_LIST, description="criteria a test can check"
    )
    files: list[RepoPath] = Field(
        max_length=MAX_LIST, description="files the task creates or changes"
    )
    deps: list[TaskId] = Field(
        max_length=MAX_TASKS, description="ids of tasks that must be done first"
    )
    # Optional so that a model that leaves it out still plans; the bounds are TaskSpec.effort's.
    effort: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description="work compared to the other tasks: 1 small, 2 twice that, and so on",
    )

    def to_task_spec(self) -> TaskSpec:
        return TaskSpec(
            id=self.id,
            title=self.title,
            description=self.description,
            acceptance=list(self.acceptance),
            files=[repo_relative(path) for path in self.files],
            deps=list(self.deps),
            effort=self.effort,
        )


class PlanOutput(_Output):
    """The plan: tasks that together reach the goal."""

    tasks: list[PlannedTask] = Field(
        min_length=1, max_length=MAX_TASKS, description="in a sensible order"
    )

    def to_task_specs(self) -> list[TaskSpec]:
        return [task.to_task_spec() for task in self.tasks]


# --- coder and tester -------------------------------------------------------------------------


class WriteFile(_Output):
    """Create a file, or replace all of its content."""

    kind: Literal["write"]
    path: RepoPath
    content: str = Field(description="the complete content of the file")


class ReplaceText(_Output):
    """Replace one passage of an existing file."""

    kind: Literal["replace"]
    path: RepoPath
    search: str = Field(
        min_length=1,
        description="text copied exactly from the file, occurring in it exactly once",
    )
    replace: str = Field(description="the text that takes its place")


FileEdit = Annotated[WriteFile | ReplaceText, Field(discriminator="kind")]


class CodeOutput(_Output):
    """The change that carries out the task."""

    summary: str = Field(max_length=LONG_TEXT, description="what changed and why, briefly")
    edits: list[FileEdit] = Field(
        min_length=1, max_length=MAX_EDITS, description="applied in order"
    )


class TestOutput(_Output):
    """Tests for the task's acceptance criteria."""

    __test__ = False  # not a pytest test class

    rationale: str = Field(
        max_length=LONG_TEXT, description="which criteria the tests check, or why none are needed"
    )
    edits: list[FileEdit] = Field(
        max_length=MAX_EDITS, description="test files to add or change; empty if none"
    )


# --- reviewer ---------------------------------------------------------------------------------


class ReviewNote(_Output):
    """One problem and what to change."""

    text: str = Field(min_length=1, max_length=LONG_TEXT)
    path: str | None = Field(default=None, description="file the comment is about")
    line: int | None = Field(default=None, ge=1, description="line in the new version of path")

    def to_review_comment(self) -> ReviewComment:
        return ReviewComment(text=self.text, path=self.path or "", line=self.line or 0)


class ReviewOutput(_Output):
    """Your review of the change."""

    # Comments come before the verdict so the model states the problems before deciding.
    comments: list[ReviewNote] = Field(
        max_length=MAX_LIST, description="concrete problems; may be empty to approve"
    )
    approved: bool = Field(description="true to merge as is, false to request changes")

    @model_validator(mode="after")
    def _changes_need_reasons(self) -> ReviewOutput:
        # A bare "rejected" gives the coder nothing to act on in the next attempt.
        if not self.approved and not self.comments:
            raise ValueError("requesting changes needs at least one comment saying what to change")
        return self

    def to_review_comments(self) -> list[ReviewComment]:
        return [note.to_review_comment() for note in self.comments]


def repo_relative(path: str) -> str:
    """A task's file as the repository names it: `./app.py`, `/app.py` and `src//app.py` are
    how a planner may write `app.py` and `src/app.py`, which the coder is then shown (a path
    not in normal form is not read, and the coder wrote the file unseen). One leading out of
    the repository (`..`) stays as written, and is not read."""
    normal = posixpath.normpath(path.lstrip("/"))
    return path if normal == "." or normal.startswith("..") else normal
