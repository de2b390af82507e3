"""Structured output through a forced tool call: how to ask for it and how to read the answer.

A forced tool call (`tool_choice` naming one function whose parameters are the pydantic schema)
works with OpenAI and with llama.cpp's server alike; `response_format` with a JSON schema does
not (llama.cpp answers it with HTTP 500).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic

from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel, ValidationError

from codeyard.llm.client import M
from codeyard.schemas.model import encodable

# Arguments longer than this are refused unread: far more than any model writes in one answer
# (the longest outputs, 128k tokens, are about 0.5 MB), so only a model looping on one string
# or a broken server sends them, and reading them would only cost memory and time.
MAX_ARGUMENTS_CHARS = 2_000_000

# How much of an unusable answer a re-ask shows the model: its start and its end (where cut-off
# JSON breaks), enough to see the mistake. All of it went back before: an 8 MiB answer made an
# 8 MB request, paid for as prompt tokens if the endpoint took it at all. The problem found in
# it is bounded alike: quoting the answer (a function name, one validation error per item of
# a huge list), it can be as long.
SHOWN_HEAD_CHARS = 3_000
SHOWN_TAIL_CHARS = 1_000


class BadAnswer(Exception):
    """The reply is not a usable call of the tool; the message is written for the model.
    `cut_off`: the answer ended at the token limit (finish_reason "length"), which is why."""

    def __init__(self, problem: str, *, reply: str, cut_off: bool = False) -> None:
        super().__init__(shortened(problem))
        self.reply = reply
        self.cut_off = cut_off


@dataclass(frozen=True, slots=True)
class ForcedTool(Generic[M]):
    name: str
    description: str
    output: type[M]

    def definition(self) -> ChatCompletionToolParam:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": tool_parameters(self.output),
            },
        }

    def choice(self) -> ChatCompletionNamedToolChoiceParam:
        return {"type": "function", "function": {"name": self.name}}

    def read(self, response: ChatCompletion, *, token_limit: int | None = None) -> M:
        """The validated arguments of the tool call in `response`, or `BadAnswer`.

        The openai SDK builds `response` without validating it, so every part may be missing,
        null or of another type than its annotation says: each is checked before use, and any
        odd shape is a `BadAnswer` (re-asked) rather than an exception no caller expects.

        An unusable answer that ended at the token limit (finish_reason "length", the cap
        being `token_limit` when one is sent) says so: it was cut off, and only a shorter one
        can fit. So does one the endpoint's content filter stopped ("content_filter").
        """
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise BadAnswer("the reply had no answer at all", reply="")
        try:
            return self._read_message(getattr(choices[0], "message", None))
        except BadAnswer as bad:
            finished = getattr(choices[0], "finish_reason", None)
            if finished == "content_filter":  # (else the error said only "no arguments")
                raise BadAnswer(
                    f"the endpoint's content filter stopped your answer before it ended, so {bad}",
                    reply=bad.reply,
                ) from bad
            if finished != "length":
                raise
            limit = f" ({token_limit} tokens)" if token_limit else ""
            raise BadAnswer(
                f"your answer was cut off at the token limit{limit} before it ended, so {bad}. "
                f"Answer more briefly: the whole call of `{self.name}` must fit in the limit",
                reply=bad.reply,
                cut_off=True,
            ) from bad

    def _read_message(self, message: object) -> M:
        if message is None:
            raise BadAnswer("the reply had no message", reply="")
        content = getattr(message, "content", None)
        tool_calls = getattr(message, "tool_calls", None)
        calls = distinct(
            call
            for call in (tool_calls if isinstance(tool_calls, list) else [])
            if is_function_call(call)
        )
        if not calls:
            refusal = getattr(message, "refusal", None)
            if isinstance(refusal, str) and refusal.strip():
                raise BadAnswer(
                    f"you declined to call the function `{self.name}`: {refusal}", reply=refusal
                )
            raise BadAnswer(
                f"you answered with text instead of calling the function `{self.name}`",
                reply=content if isinstance(content, str) else "",
            )
        if len(calls) > 1:
            raise BadAnswer(self._several(calls), reply="\n".join(map(shown_arguments, calls)))
        call = getattr(calls[0], "function", None)
        name = getattr(call, "name", None)
        raw = getattr(call, "arguments", None)
        if name != self.name:
            called = f"`{name}`" if isinstance(name, str) else "a function without a name"
            raise BadAnswer(
                f"you called {called}, but the function to call is `{self.name}`",
                reply=raw if isinstance(raw, str) else "",
            )
        try:
            text = arguments_text(raw)
        except RecursionError as error:  # an object nested too deeply to write out again
            raise BadAnswer(
                f"the arguments of `{self.name}` are nested too deeply", reply=""
            ) from error
        if text is None:
            raise BadAnswer(f"the call of `{self.name}` had no arguments", reply="")
        if len(text) > MAX_ARGUMENTS_CHARS:
            raise BadAnswer(
                f"the arguments of `{self.name}` are {len(text)} characters long, more than "
                f"the {MAX_ARGUMENTS_CHARS} an answer may have",
                reply=text,
            )
        try:
            arguments = as_strict_json(text)
        except json.JSONDecodeError as error:
            raise BadAnswer(
                f"the arguments of `{self.name}` are not JSON: {error}", reply=text
            ) from error
        except RecursionError as error:  # json's decoder recurses once per nesting level
            raise BadAnswer(
                f"the arguments of `{self.name}` are nested too deeply", reply=text
            ) from error
        try:
            return self.output.model_validate_json(arguments)
        except ValidationError as error:
            raise BadAnswer(
                f"the arguments of `{self.name}` are invalid:\n{describe(error)}",
                reply=text,
            ) from error

    def _several(self, calls: list[object]) -> str:
        """The problem of an answer making several calls: none is dropped, nor are they
        joined (what joining arguments means is the schema's, not the client's to guess)."""
        names = [getattr(getattr(call, "function", None), "name", None) for call in calls]
        if all(name == self.name for name in names):
            made = f"called the function `{self.name}` {len(calls)} times"
        else:
            called = ", ".join(f"`{n}`" if isinstance(n, str) else "(no name)" for n in names)
            made = f"made {len(calls)} function calls ({called})"
        return (
            f"you {made} in one answer, but only one call of `{self.name}` can be read: "
            "call it once, with the whole answer in that one call"
        )

    def reask(self, bad: BadAnswer) -> list[ChatCompletionMessageParam]:
        """The turns that show the model its answer and what is wrong with it.

        The answer goes back as plain assistant text rather than as a tool call: a tool call in
        the history must be followed by a `tool` message, which not every chat template of a
        local model renders, while text works everywhere. A long answer goes back shortened
        (see SHOWN_HEAD_CHARS), and the model is told so, lest it take the cut for its mistake.
        """
        shown, note = quoted(bad.reply)
        return [
            {"role": "assistant", "content": shown or "(no answer)"},
            {
                "role": "user",
                "content": encodable(
                    f"{note}That answer could not be used: {bad}\n"
                    f"Call the function `{self.name}` again with arguments that fix this."
                ),
            },
        ]


def quoted(answer: str) -> tuple[str, str]:
    """`answer` as a re-ask shows it back to the model (`shortened`), and a line telling the
    model it was shortened ("" when it was not), to put before what is wrong with it."""
    shown = shortened(answer)
    if len(shown) == len(answer):
        return shown, ""
    note = (
        f"(Your answer was {len(answer)} characters long; only its start and its end are "
        "shown above.)\n"
    )
    return shown, note


def is_function_call(call: object) -> bool:
    """A tool call of a function: its `type` says so, or is missing or null (as some vLLM and
    Ollama builds send it) while it names a function."""
    kind = getattr(call, "type", None)
    return kind == "function" or (kind is None and getattr(call, "function", None) is not None)


def distinct(calls: Iterable[object]) -> list[object]:
    """`calls` without repeats: a call sent twice alike (same function, same arguments text)
    is one answer, not two."""
    seen: set[tuple[object, str]] = set()
    kept = []
    for call in calls:
        function = getattr(call, "function", None)
        name, raw = getattr(function, "name", None), getattr(function, "arguments", None)
        key = (name if isinstance(name, str) else None, raw if isinstance(raw, str) else "")
        if isinstance(raw, str) and key in seen:
            continue
        seen.add(key)
        kept.append(call)
    return kept


def shown_arguments(call: object) -> str:
    """What a re-ask shows of one of several calls: its arguments as sent."""
    raw = getattr(getattr(call, "function", None), "arguments", None)
    return raw if isinstance(raw, str) else ""


def shortened(text: str) -> str:
    """`text`, or when that is shorter, its first SHOWN_HEAD_CHARS and last SHOWN_TAIL_CHARS
    characters with a line saying how many were cut between them; `encodable` (sent back in a
    re-ask, a lone surrogate made the next request fail to encode, an error no retry mends)."""
    text = encodable(text)
    head, tail = SHOWN_HEAD_CHARS, SHOWN_TAIL_CHARS
    cut = len(text) - head - tail
    if cut <= 0:
        return text
    short = f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail :]}"
    return short if len(short) < len(text) else text


def arguments_text(raw: object) -> str | None:
    """A tool call's arguments as the JSON text they should be, or None when there are none.

    Some servers send them as a JSON object rather than a string holding one; what the model
    meant is clear, so the object is read as its text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict | list):
        return json.dumps(raw)
    return None


def as_strict_json(arguments: str) -> str:
    """`arguments` with raw control characters inside its strings escaped, or
    `json.JSONDecodeError` when it is not JSON even so.

    Why: llama.cpp's server constrains a tool call with a grammar whose string characters are
    "anything but a quote or a backslash", so a model writing code puts real newlines and tabs
    inside JSON strings, which strict JSON (and pydantic) refuse. What the model meant is not
    in doubt, so such arguments are read as if escaped rather than sent back for a re-ask. Text
    that is not JSON at all is refused here, by the lenient reading, because pydantic's strict
    one would name the first raw control character instead of what really breaks the text.
    """
    return json.dumps(json.loads(arguments, strict=False))


def tool_parameters(output: type[BaseModel]) -> dict[str, Any]:
    """`output`'s JSON schema as the tool's parameters, with each string's `maxLength` said in
    its description instead.

    Why: llama.cpp's server turns the schema into a grammar in which `maxLength: N` becomes N
    nested optional characters, and its grammar parser recurses once per level: at 20000 (the
    cap of the agents' free-text fields) it overflows its stack and the server dies with SIGSEGV
    (`llama_grammar_parser::parse_sequence`) before answering. The cap still holds: the answer
    is validated against `output` itself, and a too long one is re-asked like any invalid one.
    """
    stated: dict[str, Any] = _length_in_words(output.model_json_schema())
    return stated


def _length_in_words(node: Any) -> Any:
    if isinstance(node, list):
        return [_length_in_words(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _length_in_words(value) for key, value in node.items()}
    cap = schema.get("maxLength")
    # only a string schema's keyword: a property *named* maxLength maps to a schema, not an int
    if schema.get("type") == "string" and isinstance(cap, int):
        del schema["maxLength"]
        limit = f"at most {cap} characters"
        text = schema.get("description")
        schema["description"] = f"{text} ({limit})" if isinstance(text, str) else limit
    return schema


# Problems of an answer described to the model (and in errors): the first ones say enough.
DESCRIBED_PROBLEMS = 20


def describe(error: ValidationError) -> str:
    """One line per problem, `path: message`, without pydantic's documentation links (noise
    to a model); the first `DESCRIBED_PROBLEMS`, then how many more there are."""
    lines = []
    for problem in error.errors(include_url=False)[:DESCRIBED_PROBLEMS]:
        path = ".".join(str(part) for part in problem["loc"]) or "arguments"
        lines.append(f"- {path}: {problem['msg']}")
    if (more := error.error_count() - DESCRIBED_PROBLEMS) > 0:
        lines.append(f"- and {more:,} more problems")
    return "\n".join(lines)
