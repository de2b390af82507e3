"""Settings from the environment: what is refused, and how the refusal reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from codeyard.bus.embedded import free_port
from codeyard.bus.topology import APPROVAL_TTL_MARGIN, DAY
from codeyard.config import Settings, invalid_settings
from codeyard.llm import LLMSettings
from tests.processes import codeyard


def problems(
    monkeypatch: pytest.MonkeyPatch, model: type[Settings | LLMSettings], **env: str
) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        model()
    found = invalid_settings(refused.value)
    assert found is not None
    return found


@pytest.mark.parametrize(
    "variable",
    [
        "CODEYARD_ACK_WAIT",
        "CODEYARD_LEADER_TTL",
        "CODEYARD_EVENT_RETENTION_DAYS",
        "CODEYARD_ARTIFACT_RETENTION_DAYS",
        "CODEYARD_APPROVAL_TIMEOUT",
    ],
)
def test_durations_must_be_finite_and_not_absurd(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """`inf` passed `gt=0`, then overflowed where NATS wants nanoseconds, crashing `up`."""
    for value in ("inf", "nan", "1e300"):
        [problem] = problems(monkeypatch, Settings, **{variable: value})
        assert problem.startswith(f"{variable}: Input should be ")
        assert problem.endswith(f"(got '{value}')")


@pytest.mark.parametrize(
    "variable",
    [
        "CODEYARD_LLM_TIMEOUT_SECONDS",
        "CODEYARD_LLM_BACKOFF_SECONDS",
        "CODEYARD_LLM_BACKOFF_MAX_SECONDS",
        "CODEYARD_LLM_OUTAGE_PATIENCE_SECONDS",
        "CODEYARD_LLM_INPUT_PRICE_PER_MTOK",
        "CODEYARD_LLM_TEMPERATURE",
    ],
)
def test_llm_figures_must_be_finite_and_not_absurd(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """An infinite LLM timeout passed `gt=0` and let a server that never answers hold a worker
    forever; an infinite price made every run's cost infinite."""
    for value in ("inf", "nan", "1e300"):
        [problem] = problems(monkeypatch, LLMSettings, **{variable: value})
        assert problem.startswith(f"{variable}: Input should be ")
        assert problem.endswith(f"(got '{value}')")


def test_each_problem_names_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(monkeypatch, Settings, CODEYARD_ACK_WAIT="-1", CODEYARD_NATS_PORT="abc")
    assert sorted(found) == [
        "CODEYARD_ACK_WAIT: Input should be greater than 0 (got '-1')",
        "CODEYARD_NATS_PORT: Input should be a valid integer, unable to parse string as an "
        "integer (got 'abc')",
    ]
    [llm] = problems(monkeypatch, LLMSettings, CODEYARD_LLM_TEMPERATURE_CODER="9")
    assert (
        llm == "CODEYARD_LLM_TEMPERATURE_CODER: Input should be less than or equal to 2 (got '9')"
    )


def test_the_dashboard_user_header_must_be_a_header_name(monkeypatch: pytest.MonkeyPatch) -> None:
    [problem] = problems(monkeypatch, Settings, CODEYARD_DASHBOARD_USER_HEADER="X-User: alice")
    assert problem == (
        "CODEYARD_DASHBOARD_USER_HEADER: not an HTTP header name (letters, digits and -, like "
        "X-Forwarded-User) (got 'X-User: alice')"
    )
    monkeypatch.setenv("CODEYARD_DASHBOARD_USER_HEADER", "X-Forwarded-User")
    assert Settings().dashboard_user_header == "X-Forwarded-User"


def test_a_refused_secret_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(dashboard_token=["not-a-string-but-secret"])
    [problem] = invalid_settings(refused.value) or []
    assert problem.startswith("CODEYARD_DASHBOARD_TOKEN: ")
    assert "secret" not in problem


def test_other_validation_errors_are_not_taken_for_settings() -> None:
    from codeyard.agents.outputs import CodeOutput

    with pytest.raises(ValidationError) as refused:
        CodeOutput.model_validate({"edits": 3})
    assert invalid_settings(refused.value) is None


def test_sensible_values_pass() -> None:
    settings = Settings(ack_wait=3600, leader_ttl=60, event_retention_days=3650)
    assert settings.topology().ack_wait == 3600


def test_approvals_are_kept_past_the_approval_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A question expiring from `cy_approvals` before it timed out left its run waiting forever:
    an events retention shorter than the approval timeout no longer shortens the approvals'."""
    monkeypatch.setenv("CODEYARD_EVENT_RETENTION_DAYS", "0.0001")  # 8.64 s
    monkeypatch.setenv("CODEYARD_APPROVAL_TIMEOUT", "60")
    topology = Settings().topology()
    assert topology.approval_timeout == 60
    assert topology.approvals_ttl() == 60 + APPROVAL_TTL_MARGIN
    monkeypatch.setenv("CODEYARD_EVENT_RETENTION_DAYS", "30")
    assert Settings().topology().approvals_ttl() == 30 * DAY  # answers kept as long as events


def test_a_credentials_dir_that_is_not_there_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A misspelt CODEYARD_NATS_CREDENTIALS_DIR meant "no credentials": the process connected
    without a user, was refused, and said NATS could not be reached while it ran."""
    missing = tmp_path / "credentails"
    [problem] = problems(monkeypatch, Settings, CODEYARD_NATS_CREDENTIALS_DIR=str(missing))
    assert problem.startswith("CODEYARD_NATS_CREDENTIALS_DIR: no such directory")
    assert problem.endswith(f"(got '{missing}')")
    assert "\n" not in problem
    a_file = tmp_path / "coder.env"
    a_file.write_text("CODEYARD_NATS_USER=coder\n")
    [problem] = problems(monkeypatch, Settings, CODEYARD_NATS_CREDENTIALS_DIR=str(a_file))
    assert problem.startswith("CODEYARD_NATS_CREDENTIALS_DIR: no such directory")


def test_an_existing_credentials_dir_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "coder.env").write_text("CODEYARD_NATS_USER=coder\nCODEYARD_NATS_PASSWORD=pw\n")
    monkeypatch.setenv("CODEYARD_NATS_CREDENTIALS_DIR", str(tmp_path))
    monkeypatch.delenv("CODEYARD_NATS_USER", raising=False)
    credentials = Settings().credentials("coder")
    assert credentials is not None
    assert credentials.user == "coder"


def test_a_data_dir_set_empty_or_port_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty, the data dir was the current directory: `up` put its server's store and
    credentials where it started, and commands started elsewhere could not log in. Port 0 made
    `up` take any free port, and every command look for it at port 0."""
    assert problems(monkeypatch, Settings, CODEYARD_DATA_DIR=" ", CODEYARD_NATS_PORT="0") == [
        "CODEYARD_DATA_DIR: empty; name a directory, or unset it for the default (got ' ')",
        "CODEYARD_NATS_PORT: Input should be greater than or equal to 1 (got '0')",
    ]


def test_a_relative_data_or_credentials_dir_is_refused_and_home_is_expanded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Relative, each command looked for the server's store under the directory it started in."""
    relative = "relative, so each command would find it under the directory it was started in"
    assert problems(
        monkeypatch, Settings, CODEYARD_DATA_DIR="data", CODEYARD_NATS_CREDENTIALS_DIR="./c"
    ) == [
        f"CODEYARD_DATA_DIR: {relative}; give an absolute path (got 'data')",
        f"CODEYARD_NATS_CREDENTIALS_DIR: {relative}; give an absolute path (got './c')",
    ]
    monkeypatch.setenv("CODEYARD_DATA_DIR", "~/codeyard")
    monkeypatch.delenv("CODEYARD_NATS_CREDENTIALS_DIR")
    assert Settings().data_dir == Path.home() / "codeyard"


def test_a_credentials_dir_or_an_address_set_empty_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Empty, the credentials were read from wherever a command started, and the dashboard
    listened on every interface (as 0.0.0.0 would)."""
    assert problems(
        monkeypatch,
        Settings,
        CODEYARD_NATS_CREDENTIALS_DIR="",
        CODEYARD_DASHBOARD_HOST="",
        CODEYARD_METRICS_HOST=" ",
    ) == [
        "CODEYARD_NATS_CREDENTIALS_DIR: empty; name a directory, or unset it for the default "
        "(got '')",
        "CODEYARD_METRICS_HOST: empty; name an address (0.0.0.0 for every interface), or unset "
        "it for 127.0.0.1 (got ' ')",
        "CODEYARD_DASHBOARD_HOST: empty; name an address (0.0.0.0 for every interface), or "
        "unset it for 127.0.0.1 (got '')",
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:80", "'http://127.0.0.1:80' is not a NATS server address"),
        ("nats://127.0.0.1:99999", "'nats://127.0.0.1:99999' has no valid port (1-65535)"),
        ("nats://:4222", "'nats://:4222' names no host"),
        ("nats://a:4222,,nats://b:4222", "a server address is empty"),
        ("nats://a:4222,ws://b:8080", "websocket (ws://, wss://) and other servers may not be"),
        # a password is never shown, nor the variable as given
        ("nats://ops:s3cret@127.0.0.1:0x10", "'nats://ops:***@127.0.0.1:0x10' has no valid port"),
    ],
)
def test_a_nats_url_that_names_no_nats_server_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    """It was taken as it was, and every attempt to connect failed as "cannot reach NATS"."""
    [said] = problems(monkeypatch, Settings, NATS_URL=url)
    assert said.startswith(f"NATS_URL: {problem}"), said
    assert "s3cret" not in said


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222",
        "127.0.0.1:4222, nats://user:pw@127.0.0.2:4223",  # a cluster, as the nats CLI takes it
        "tls://nats.example.com",
        "wss://a.example.com,ws://b.example.com:8080",
    ],
)
def test_nats_servers_pass_alone_or_as_a_cluster(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NATS_URL", url)
    assert Settings().server_url() == url


@pytest.mark.parametrize("unreadable", ["utf-16", "a directory"])
def test_credentials_that_cannot_be_read_are_a_setup_error(tmp_path: Path, unreadable: str) -> None:
    """A UTF-16 env file (as Windows PowerShell writes) showed a traceback; a directory in its
    place was reported as NATS being unreachable."""
    ctl = tmp_path / "ctl.env"
    if unreadable == "a directory":
        ctl.mkdir()
    else:
        ctl.write_text("CODEYARD_NATS_USER=ctl\n", encoding="utf-16")
    env = os.environ | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "CODEYARD_NATS_CREDENTIALS_DIR": str(tmp_path),
    }
    said = codeyard(env, "status", timeout=60)
    assert said.returncode == 2
    assert said.stderr.startswith(f"error: cannot read the NATS credentials in {ctl}: "), said
    assert "Traceback" not in said.stderr
    assert "CODEYARD_NATS_CREDENTIALS_DIR chooses the directory" in said.stderr
