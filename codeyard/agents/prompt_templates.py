"""The prompt of each role, rendered from the markdown templates in `codeyard/agents/prompts/`.

A template has five level-1 sections, in this order: Goal, Operating constraints, Role,
Behaviour, Context. The first four are the system message; the body of Context is the user
message. Placeholders are `$name` (or `${name}`); `$$` is a literal dollar sign.

Rendering is strict: a placeholder without a value, or a value no placeholder asks for, is an
error rather than a prompt with a hole in it. Values are inserted once and never re-read, so a
`$goal` inside a file's content stays literally `$goal`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal, get_args

from codeyard.llm.client import ChatMessage

TemplateName = Literal["planner", "coder", "tester", "reviewer"]
TEMPLATE_NAMES: tuple[TemplateName, ...] = get_args(TemplateName)
SECTIONS = ("Goal", "Operating constraints", "Role", "Behaviour", "Context")

_HEADING = re.compile(r"^# (.+?)\s*$", re.MULTILINE)


class PromptError(ValueError):
    """A template that cannot be loaded, or values that do not fit it."""


@dataclass(frozen=True)
class PromptTemplate:
    """A role's template, split into its system part and its context part."""

    name: str
    instructions: string.Template  # Goal .. Behaviour, with their headings: the system message
    context: string.Template  # the body of the Context section: the user message

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(self.instructions.get_identifiers() + self.context.get_identifiers())

    def render(self, values: Mapping[str, str]) -> list[ChatMessage]:
        """The system and user messages with every placeholder filled from `values`."""
        missing = sorted(self.placeholders - values.keys())
        unknown = sorted(values.keys() - self.placeholders)
        problems = []
        if missing:
            problems.append("no value for " + ", ".join(f"${name}" for name in missing))
        if unknown:
            problems.append("no placeholder for " + ", ".join(repr(name) for name in unknown))
        if problems:
            raise PromptError(f"the {self.name} template: " + "; ".join(problems))
        return [
            {"role": "system", "content": self.instructions.substitute(values)},
            {"role": "user", "content": self.context.substitute(values)},
        ]


def parse_template(name: str, text: str) -> PromptTemplate:
    """Split a template's markdown into its parts, checking its sections and placeholders."""
    headings = _HEADING.findall(text)
    if tuple(headings) != SECTIONS:
        raise PromptError(
            f"the {name} template has sections {headings}, expected {list(SECTIONS)} in order"
        )
    context_heading = list(_HEADING.finditer(text))[-1]
    instructions = string.Template(text[: context_heading.start()].strip() + "\n")
    context = string.Template(text[context_heading.end() :].strip() + "\n")
    for part in (instructions, context):
        # A stray `$` (say `$5`) would otherwise only fail when the template is rendered.
        if not part.is_valid():
            raise PromptError(f"the {name} template has a `$` that is no placeholder; write `$$`")
    return PromptTemplate(name=name, instructions=instructions, context=context)


@cache
def load_template(name: str) -> PromptTemplate:
    """The packaged template of a role: `planner`, `coder`, `tester` or `reviewer`."""
    # Checked against the known names, so a name can never point elsewhere in the package.
    if name not in TEMPLATE_NAMES:
        raise PromptError(f"no prompt template {name!r}; there are {', '.join(TEMPLATE_NAMES)}")
    text = resources.files("codeyard.agents").joinpath("prompts", f"{name}.md").read_text("utf-8")
    return parse_template(name, text)


def render_prompt(name: TemplateName, /, **values: str) -> list[ChatMessage]:
    """The chat messages of role `name` with its placeholders filled, e.g.
    `render_prompt("planner", goal=..., constraints=..., repo_summary=..., feedback=...)`."""
    return load_template(name).render(values)
