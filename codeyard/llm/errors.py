"""What can go wrong when asking an LLM, as exceptions a worker can act on."""

from __future__ import annotations

from codeyard.schemas import Usage


class LLMError(Exception):
    """Base of every error raised by `codeyard.llm`. `usage` is what was spent before it happened,
    so a worker can still report the tokens a failed task cost; `model` is the model that gave
    the last of those answers (as the endpoint named it, else as configured), "" when none came
    (an endpoint that failed or refused from the first request)."""

    def __init__(self, message: str, *, usage: Usage | None = None, model: str = "") -> None:
        super().__init__(message)
        self.usage = usage or Usage()
        self.model = model


class LLMNotConfigured(LLMError):
    """No endpoint is configured; the message explains the ways to configure one."""


class LLMUnavailable(LLMError):
    """The endpoint kept failing (HTTP 429 or 5xx, connection errors, timeouts, 200s that are
    no chat completion or report an error in their body) through every retry. Worth trying
    again later."""


class LLMRejected(LLMError):
    """The endpoint refused the request itself (HTTP 4xx other than 429: bad key, unknown model,
    malformed request). Retrying the same request will not help."""

    def __init__(
        self, message: str, *, status: int, usage: Usage | None = None, model: str = ""
    ) -> None:
        super().__init__(message, usage=usage, model=model)
        self.status = status


class InvalidOutput(LLMError):
    """The model's answer still did not fit the requested schema after every re-ask.
    `last_error` is the validation error of the last answer."""

    def __init__(
        self, message: str, *, last_error: str, usage: Usage | None = None, model: str = ""
    ) -> None:
        super().__init__(message, usage=usage, model=model)
        self.last_error = last_error
