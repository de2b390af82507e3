"""`LLMClient` over `openai.AsyncOpenAI`, for any OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from codeyard.llm.backoff import Backoff
from codeyard.llm.capped_http import BodyTooLarge, capped_client
from codeyard.llm.client import ChatMessage, Completion, M
from codeyard.llm.errors import InvalidOutput, LLMRejected, LLMUnavailable
from codeyard.llm.settings import LLMSettings, RoleModel
from codeyard.llm.tool_call import BadAnswer, ForcedTool
from codeyard.observability import metrics
from codeyard.schemas import Usage

log = logging.getLogger(__name__)

N = TypeVar("N", int, float)

# The statuses the openai SDK itself treats as transient; any other 4xx is the request's fault.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class OpenAIClient:
    """Structured output by forced tool call, re-asked with the validation error when invalid,
    retried with backoff when the endpoint fails. Use as an async context manager, or call
    `close()`.

    The SDK's own retries are off (`max_retries=0`): retries here are counted, logged and paced
    by `LLMSettings`.

    `timeout_seconds` bounds each request as a whole (each retry gets its own): the SDK's
    timeout, passed to httpx, bounds each read, so a server sending a byte every few seconds
    would hold the call, and the worker's slot with it, for ever.

    A response body is read up to `MAX_BODY_BYTES` (see `capped_http`), no further.
    """

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self.outage_patience = settings.outage_patience_seconds
        self._backoff = Backoff(settings.backoff_seconds, settings.backoff_max_seconds)
        self._openai = openai.AsyncOpenAI(
            base_url=settings.endpoint(),
            api_key=settings.key(),
            timeout=settings.timeout_seconds,
            max_retries=0,
            http_client=capped_client(),
        )
        url = self._openai.base_url
        # What errors may name the endpoint as: its password (`user:secret@host`) left out.
        self._endpoint = str(url.copy_with(username=None, password=None))
        self._secrets = secrets_in(settings.key(), url.password or "")

    def _said(self, text: str) -> str:
        """`text` with the API key (and the base URL's password) taken out: the HTTP stack's
        errors may quote the request's headers (h11: "Illegal header value b'Bearer sk-..'"),
        an endpoint's error body may echo them, and what is said here reaches logs, run
        records, events, the dashboard and `codeyard status`."""
        return redacted(text, self._secrets)

    async def close(self) -> None:
        await self._openai.close()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def structured(
        self,
        role: str,
        messages: Sequence[ChatMessage],
        output: type[M],
        *,
        tool_name: str,
        tool_description: str,
    ) -> Completion[M]:
        chosen = self._settings.for_role(role)
        tool = ForcedTool(tool_name, tool_description, output)
        conversation = [as_param(message) for message in messages]
        usage = Usage()
        answered = ""  # the model of the last answer, for an error after it to name
        last_error = ""
        cut_off = 0  # answers cut off at the token limit
        asks = self._settings.max_reasks + 1
        for attempt in range(1, asks + 1):
            response = await self._complete(role, chosen, conversation, tool, usage, answered)
            spent = self._usage(response, chosen.model)
            usage += spent
            answered = model_of(response) or chosen.model
            tokens = metrics.LLM_TOKENS
            tokens.labels(role, chosen.model, "prompt").inc(spent.prompt_tokens)
            tokens.labels(role, chosen.model, "completion").inc(spent.completion_tokens)
            try:
                value = tool.read(response, token_limit=self._settings.max_tokens)
            except BadAnswer as bad:
                metrics.LLM_INVALID_ANSWERS.labels(role, chosen.model).inc()
                last_error = self._said(str(bad))
                log.debug("LLM %s answer %d/%d invalid: %s", role, attempt, asks, last_error)
                cut_off += bad.cut_off
                if cut_off == CUT_OFF_ANSWERS:
                    # Told once to answer shorter, the model did not: another re-ask, with
                    # the same cap and a longer prompt, would be paid for and cut off again.
                    break
                conversation += tool.reask(bad)
                continue
            return Completion(value=value, usage=usage, model=answered, attempts=attempt)
        if cut_off == CUT_OFF_ANSWERS:
            cap = self._settings.max_tokens
            limit = f"CODEYARD_LLM_MAX_TOKENS={cap}" if cap else "the endpoint's own"
            raise InvalidOutput(
                f"{role}: no valid `{tool_name}` call: {cut_off} answers were cut off at the "
                f"token limit ({limit}), the last after the model was told to answer "
                f"shorter; last problem: {last_error}",
                last_error=last_error,
                usage=usage,
                model=answered,
            )
        raise InvalidOutput(
            f"{role}: no valid `{tool_name}` call in {asks} answers; last problem: {last_error}",
            last_error=last_error,
            usage=usage,
            model=answered,
        )

    async def _complete(
        self,
        role: str,
        chosen: RoleModel,
        conversation: list[ChatCompletionMessageParam],
        tool: ForcedTool[M],
        usage: Usage,
        answered: str,
    ) -> ChatCompletion:
        """One answer, retrying transient failures. `usage` so far, and the model that gave
        the last answer (`answered`, "" before the first), only go into errors."""
        retries = self._settings.max_retries
        cap = self._settings.max_tokens
        as_completion = self._settings.max_tokens_field == "max_completion_tokens"
        failure = ""
        for retry in range(retries + 1):
            started = time.monotonic()
            retry_after: float | None = None
            outcome = "ok"
            try:
                async with asyncio.timeout(self._settings.timeout_seconds):
                    response = await self._openai.chat.completions.create(
                        model=chosen.model,
                        temperature=given(chosen.temperature),
                        messages=conversation,
                        tools=[tool.definition()],
                        tool_choice=tool.choice(),
                        max_tokens=given(None if as_completion else cap),
                        max_completion_tokens=given(cap if as_completion else None),
                    )
            except openai.APIStatusError as error:
                status = error.status_code
                outcome = "http_error"
                # OpenAI's 429 for an account out of credit: waiting does not bring it back
                out_of_quota = getattr(error, "code", None) == "insufficient_quota"
                if (status not in RETRYABLE_STATUSES and status < 500) or out_of_quota:
                    self._observe(role, chosen, "rejected", started)
                    raise LLMRejected(
                        f"{role}: the LLM endpoint refused the request (HTTP {status}): "
                        + self._said(error.message),
                        status=status,
                        usage=usage,
                        model=answered,
                    ) from error
                # with the endpoint's own words, which say why (an overload, a rate limit)
                failure = f"HTTP {status}: {said_by(error)[:REPORTED_ERROR_CHARS]}"
                retry_after = retry_after_of(error.response.headers)
            except (openai.APITimeoutError, TimeoutError):
                # TimeoutError: `asyncio.timeout` above (the whole request), the SDK's own
                # (one read, or connecting) is APITimeoutError; the same failure to the caller.
                failure = f"no answer within {self._settings.timeout_seconds:g}s"
                outcome = "timeout"
            except openai.APIConnectionError as error:
                failure = f"connection failed ({error.__cause__ or error})"
                outcome = "connection_error"
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                # A body labelled JSON that is not (cut short, a proxy's page): the SDK lets
                # the decoder's error out. Only the answer is decoded, so it is the endpoint's.
                # A body cut inside a multi-byte character fails before parsing starts, as
                # UnicodeDecodeError (the decoder reads bytes), but is the same failure.
                failure = f"the answer is not JSON: {error}"
                outcome = "malformed"
            except RecursionError:
                # The decoder recurses once per nesting level: a body nested thousands deep.
                failure = "the answer is JSON nested too deeply to read"
                outcome = "malformed"
            except BodyTooLarge as error:
                # Longer than any answer codeyard would use: the endpoint's fault, like a body
                # that is not JSON, and retried like one (a broken proxy's, or a server's
                # stray stream, need not come again); each try reads no more than the cap.
                failure = str(error)
                outcome = "malformed"
            else:
                # The SDK hands back whatever the body decoded to when it is not a JSON object
                # (an HTML page from a captive proxy as a str, a JSON list as a list): the
                # endpoint failed, not the model, so it is retried like an HTTP 502.
                reported = reported_error(response)
                if isinstance(response, ChatCompletion) and reported is None:
                    self._observe(role, chosen, outcome, started)
                    log.debug(
                        "LLM %s model=%s latency=%.3fs",
                        role,
                        model_of(response) or chosen.model,
                        time.monotonic() - started,
                    )
                    return response
                if reported is not None:
                    # An error in a 200's body (OpenRouter and other gateways, once a provider
                    # failed after the status was sent): the endpoint failed, not the model.
                    failure = f"the endpoint answered with an error: {reported}"
                else:
                    failure = f"the answer is not a chat completion but {_sample(response)}"
                outcome = "malformed"
            failure = self._said(failure)
            self._observe(role, chosen, outcome, started)
            if retry == retries:
                break
            delay = self._backoff.delay(retry + 1, retry_after)
            log.warning(
                "LLM %s call failed: %s; retry %d of %d in %.2fs",
                role,
                failure,
                retry + 1,
                retries,
                delay,
            )
            await asyncio.sleep(delay)
        raise LLMUnavailable(
            f"{role}: the LLM endpoint {self._endpoint} failed {retries + 1} times; "
            f"last: {failure}",
            usage=usage,
            model=answered,
        )

    @staticmethod
    def _observe(role: str, chosen: RoleModel, outcome: str, started: float) -> None:
        """One request's count and latency, labelled with the model asked for (an endpoint
        may name a dated version in its answer; failures have no answer to name one)."""
        metrics.LLM_CALLS.labels(role, chosen.model, outcome).inc()
        metrics.LLM_SECONDS.labels(role, chosen.model).observe(time.monotonic() - started)

    def _usage(self, response: ChatCompletion, model: str) -> Usage:
        # A response without usage (some local servers) still counts as a call. The SDK does
        # not validate what it decodes, so the counts are whatever the server wrote.
        reported = getattr(response, "usage", None)
        prompt = token_count(getattr(reported, "prompt_tokens", None))
        completion = token_count(getattr(reported, "completion_tokens", None))
        return Usage(
            calls=1,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self._settings.cost_usd(prompt, completion, model),
        ).within_bounds()  # prices times counts may pass the cost a record can hold


# Answers cut off at the token limit after which no more are asked for: the second came after
# the model was told to answer shorter.
CUT_OFF_ANSWERS = 2

# How much of an endpoint's own error message is kept: the provider's words, not its dump.
REPORTED_ERROR_CHARS = 500

# Shorter keys are placeholders (`OPENAI_API_KEY=local` for a local server), and taking every
# "local" out of "localhost" would garble errors.
SHORTEST_SECRET = 8

# More tokens than any one answer has: a count over it is the server's mistake, and left as is
# it would overflow the 64-bit integers usage is stored and sent as.
MAX_TOKEN_COUNT = 10**12


def token_count(value: object) -> int:
    """A token count the server reported, as a non-negative int: null, a string, a negative
    or a non-finite number count as 0 (a bad count must not fail the answer, nor lower the
    run's usage; metrics refuse negative increments)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value <= 0:
        return 0
    return min(int(value), MAX_TOKEN_COUNT)


def given(value: N | None) -> N | openai.Omit:
    """`value`, or left out of the request when None. The SDK would send None as JSON null,
    and a parameter sent at all can be refused: OpenAI's reasoning models (o1, o3, gpt-5)
    answer HTTP 400 to `max_tokens` and to any `temperature` but their own. Left out, the
    endpoint's default applies."""
    return openai.omit if value is None else value


def said_by(error: openai.APIStatusError) -> str:
    """The message of an HTTP error's body (`{"error": {"message": ...}}`, which the SDK gives
    as `body`), else the SDK's own text for it ("Error code: 503 - ...")."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else error.message


def model_of(response: ChatCompletion) -> str:
    """The model the endpoint named in its answer, or "" (missing, or not a string)."""
    model = getattr(response, "model", None)
    return model if isinstance(model, str) else ""


def reported_error(body: object) -> str | None:
    """The error an HTTP 200 body reports instead of answering (`{"error": {"message": ...,
    "code": 502}}`, at the top or in its first choice), as text; None when it reports none."""
    choices = getattr(body, "choices", None)
    first = choices[0] if isinstance(choices, list) and choices else None
    for holder in (body, first):
        error = getattr(holder, "error", None)
        if isinstance(holder, dict):  # a choice the SDK left undecoded
            error = holder.get("error")
        if not error:  # null, or an empty `{}`/`""`/`false` some gateways send with answers
            continue
        if isinstance(error, dict):
            message, code = error.get("message"), error.get("code")
            text = message if isinstance(message, str) and message else repr(error)
            if isinstance(code, int | str) and not isinstance(code, bool) and str(code):
                text = f"{text} (code {code})"
        else:
            text = error if isinstance(error, str) else repr(error)
        return text[:REPORTED_ERROR_CHARS]
    return None


def secrets_in(*values: str) -> tuple[str, ...]:
    """What `redacted` takes out for each of `values`: the value, and each run of printable
    ASCII in it (a key with a line break shows in an error as its bytes' repr, escaped),
    those long enough to be secrets, longest first."""
    found = set()
    for value in values:
        found.update({value, *re.split(r"[^\x21-\x7e]+", value)})
    return tuple(sorted((s for s in found if len(s) >= SHORTEST_SECRET), key=len, reverse=True))


def redacted(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _sample(body: object) -> str:
    text = body if isinstance(body, str) else repr(body)
    return f"{type(body).__name__} {text[:80]!r}"


def as_param(message: ChatMessage) -> ChatCompletionMessageParam:
    content = message["content"]
    if message["role"] == "system":
        return {"role": "system", "content": content}
    if message["role"] == "assistant":
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """The seconds an endpoint asks to wait: `retry-after-ms` (OpenAI's and Azure's, finer)
    if given, else `Retry-After` in seconds; the HTTP-date form is rare from LLM APIs and is
    ignored."""
    if (millis := seconds(headers.get("retry-after-ms"))) is not None:
        return millis / 1000
    return seconds(headers.get("retry-after"))


def seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
