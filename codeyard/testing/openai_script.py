"""The scripted answers of `ScriptedOpenAI` (a test double, never used by the product): rules,
their replies, and the OpenAI chat-completion JSON built from them.

A script is a JSON list of rules. A rule matches a chat request by the function its
`tool_choice` forces (`tool`) and, optionally, by a substring of the last user message
(`contains`); the first matching rule with a reply left answers. Its replies are used in order,
each `times` times (default 1); the last one repeats once they are used up, unless
`repeat_last` is false, in which case the rule stops matching. A reply is exactly one of:

    {"arguments": {...}}         a call of the forced function with these arguments
    {"raw_arguments": "{oops"}   the same with the arguments string as given (invalid JSON)
    {"text": "..."}              a plain text answer, no tool call
    {"status": 500}              an HTTP error with an OpenAI-style error body (`message`,
                                 `code`: "insufficient_quota", say)
    {"body": ...}                HTTP 200 with this JSON as the whole body, as given (a
                                 completion of an odd shape, a list, null)
    {"raw_body": "<html>"}       HTTP 200 with this text as the body, `content_type` (default
                                 application/json) saying what it is (a captive proxy's page)

and may add `delay` (seconds before answering), `trickle` (seconds between the body's bytes,
sent one at a time: a server that is slow but never silent for long), `call` (the function name
in the tool call, default the forced one), `model` (the model the answer says answered, default
the one asked for; real endpoints often name a dated version), `usage` ({"prompt_tokens": N,
"completion_tokens": M}; default len(text) // 4 of the request's messages and of the answer) or
`omit_usage: true`.

    [{"tool": "submit_plan", "contains": "JWT", "replies": [
        {"status": 429, "times": 2},
        {"arguments": {"tasks": []}}]}]
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"


class TokenCount(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    prompt_tokens: int
    completion_tokens: int


class Reply(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None
    text: str | None = None
    status: int | None = None
    # UNSET rather than None: `{"body": null}` is a body (the JSON null) to send.
    body: Any | msgspec.UnsetType = msgspec.UNSET
    raw_body: str | None = None
    content_type: str = "application/json"
    message: str = ""
    code: str | None = None
    call: str | None = None
    model: str | None = None
    times: int = 1
    delay: float = 0.0
    trickle: float = 0.0
    usage: TokenCount | None = None
    omit_usage: bool = False

    def __post_init__(self) -> None:
        kinds = (self.arguments, self.raw_arguments, self.text, self.status, self.raw_body)
        given = sum(kind is not None for kind in kinds) + (self.body is not msgspec.UNSET)
        if given != 1:
            raise ValueError(
                "a reply is exactly one of arguments, raw_arguments, text, status, body, raw_body"
            )
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if self.trickle < 0:
            raise ValueError("trickle must be at least 0")


class Rule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    replies: list[Reply]
    tool: str | None = None
    contains: str | None = None
    repeat_last: bool = True

    def __post_init__(self) -> None:
        if not self.replies:
            raise ValueError("a rule needs at least one reply")

    def matches(self, tool: str | None, user_message: str) -> bool:
        if self.tool is not None and self.tool != tool:
            return False
        return self.contains is None or self.contains in user_message


def parse_script(data: object) -> list[Rule]:
    """Rules from decoded JSON; `msgspec.ValidationError` names the path of a mistake."""
    return msgspec.convert(data, type=list[Rule])


def load_script(path: Path) -> list[Rule]:
    return msgspec.json.decode(path.read_bytes(), type=list[Rule])


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # sent as JSON, unless `raw` is given
    delay: float = 0.0
    raw: bytes | None = None  # the body as sent, instead of `body` as JSON
    content_type: str = "application/json"
    trickle: float = 0.0  # seconds between two bytes of the body (0: all at once)

    def payload(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode()


def error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> Answer:
    body = {"message": message, "type": kind, "param": None, "code": code}
    return Answer(status, {"error": body})


class Script:
    """Answers requests from the rules. Thread-safe: the HTTP server answers on many threads."""

    def __init__(self, rules: list[Rule]) -> None:
        # Each rule's replies with `times` spelled out, so a rule's state is one index.
        self._rules = [(rule, [r for r in rule.replies for _ in range(r.times)]) for rule in rules]
        self._used = [0] * len(rules)
        self._calls = 0
        self._lock = threading.Lock()

    def answer(self, method: str, path: str, body: Any) -> Answer:
        if (method, path) == ("GET", MODELS_PATH):
            model = {"id": "scripted", "object": "model", "created": 0, "owned_by": "codeyard"}
            return Answer(200, {"object": "list", "data": [model]})
        if (method, path) != ("POST", CHAT_PATH):
            return error(404, f"the scripted server has no route {method} {path}")
        problem = check_chat_request(body)
        if problem:
            return error(400, problem)
        tool = forced_tool(body)
        user = last_user_message(body)
        with self._lock:
            reply = self._next_reply(tool, user)
            self._calls += 1
            number = self._calls
        if reply is None:
            return error(
                400, f"no scripted rule left for tool {tool!r} and last user message {user!r}"
            )
        if reply.status is not None:
            message = reply.message or f"scripted HTTP {reply.status}"
            kind = "server_error" if reply.status >= 500 else "invalid_request_error"
            failure = error(reply.status, message, kind, reply.code)
            return Answer(failure.status, failure.body, reply.delay, trickle=reply.trickle)
        if reply.raw_body is not None:
            raw = reply.raw_body.encode()
            return Answer(200, None, reply.delay, raw, reply.content_type, reply.trickle)
        if reply.body is not msgspec.UNSET:
            return Answer(200, reply.body, reply.delay, None, reply.content_type, reply.trickle)
        if reply.text is None and tool is None:
            return error(400, "the scripted reply is a tool call, but the request forces no tool")
        answer = completion(number, body, tool, reply)
        return Answer(200, answer, reply.delay, trickle=reply.trickle)

    def _next_reply(self, tool: str | None, user: str) -> Reply | None:
        for index, (rule, replies) in enumerate(self._rules):
            if not rule.matches(tool, user):
                continue
            used = self._used[index]
            if used < len(replies):
                self._used[index] = used + 1
                return replies[used]
            if rule.repeat_last:
                return replies[-1]
        return None


def check_chat_request(body: Any) -> str:
    """What makes `body` a request this server will not answer, or ""."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
        return "a chat completion request needs `model` (string) and `messages` (list)"
    if body.get("stream"):
        return "the scripted server does not stream"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        # llama.cpp's server fails this with HTTP 500; codeyard must use a forced tool call.
        return "response_format json_schema is not supported: force a tool call instead"
    tool = forced_tool(body)
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    names = [t.get("function", {}).get("name") for t in tools]
    if tool is not None and tool not in names:
        return f"tool_choice forces `{tool}`, which is not among the tools {names}"
    return ""


def forced_tool(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return name if isinstance(name, str) else None
    return None


def last_user_message(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def completion(number: int, body: dict[str, Any], tool: str | None, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.text is not None:
        answer_text, finish_reason = reply.text, "stop"
    else:
        raw = reply.raw_arguments
        answer_text = raw if raw is not None else json.dumps(reply.arguments)
        finish_reason = "tool_calls"
        function = {"name": reply.call or tool, "arguments": answer_text}
        message["tool_calls"] = [{"id": f"call_{number}", "type": "function", "function": function}]
    result: dict[str, Any] = {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"] if reply.model is None else reply.model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
    }
    if not reply.omit_usage:
        usage = reply.usage or TokenCount(
            prompt_tokens=len(json.dumps(body["messages"])) // 4,
            completion_tokens=len(answer_text) // 4,
        )
        result["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
    return result
