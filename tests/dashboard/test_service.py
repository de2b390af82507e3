"""`codeyard dashboard` and its place among the services `codeyard up` keeps running."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.console import Console

from codeyard.bus.credentials import Credentials
from codeyard.config import Settings
from codeyard.dashboard.service import (
    CannotServe,
    announcement,
    dashboard_token,
    public_origins,
    run_dashboard,
    sign_in_url,
)
from codeyard.launch import service_children


def test_up_runs_the_dashboard_as_ctl_with_the_token() -> None:
    credentials = {
        "ctl": Credentials("ctl", "ctl-secret"),
        "coordinator": Credentials("coordinator", "coordinator-secret"),
    }
    children = service_children(
        "nats://127.0.0.1:4222",
        coders=1,
        agents=False,
        credentials=credentials,
        dashboard_token="a-token-long-enough",
    )
    [dashboard] = [child for child in children if child.name == "dashboard"]
    assert list(dashboard.argv[-2:]) == ["codeyard", "dashboard"]
    assert dashboard.env is not None
    assert dashboard.env["CODEYARD_NATS_USER"] == "ctl"
    assert dashboard.env["CODEYARD_DASHBOARD_TOKEN"] == "a-token-long-enough"
    assert "coordinator-secret" not in dashboard.env.values()
    without = service_children("nats://127.0.0.1:4222", coders=1, agents=False)
    assert "dashboard" not in {child.name for child in without}


def test_a_token_is_generated_when_none_is_set() -> None:
    generated = dashboard_token(Settings(dashboard_token=""))
    assert len(generated) >= 16
    assert generated != dashboard_token(Settings(dashboard_token=""))
    fixed = Settings(dashboard_token="my-own-token-1234")
    assert dashboard_token(fixed) == "my-own-token-1234"
    assert sign_in_url("http://127.0.0.1:8700", "t") == "http://127.0.0.1:8700/signin#token=t"


def test_the_sign_in_link_is_shown_only_for_a_token_made_here() -> None:
    """A token set (from a Secret, in compose and Kubernetes) was printed to the logs; one of
    `openssl rand -base64` gave a link whose `+` the server read as a space."""
    base = "http://127.0.0.1:8700"
    made = announcement(base, "a+b/c=d&e#f-long-enough", Settings(dashboard_token=""))
    assert made == f"dashboard: {base}/signin#token=a%2Bb%2Fc%3Dd%26e%23f-long-enough"
    given = announcement(base, "my-own-token-1234", Settings(dashboard_token="my-own-token-1234"))
    assert "my-own-token-1234" not in given
    assert given == f"dashboard: {base}/ (sign in with the token in CODEYARD_DASHBOARD_TOKEN)"
    # set by `codeyard up`, which made it: nobody else knows it, and its link is the way in
    made_by_up = Settings(dashboard_token="a-token-up-made-1234")
    shown = announcement(base, "a-token-up-made-1234", made_by_up, show_link=True)
    assert shown == f"dashboard: {base}/signin#token=a-token-up-made-1234"


def test_a_token_too_short_is_bad_configuration() -> None:
    """Checked before anything starts (`up` checks it too): a guessable token would make the
    dashboard's check pointless."""
    with pytest.raises(CannotServe, match=r"CODEYARD_DASHBOARD_TOKEN: .* at least 16"):
        dashboard_token(Settings(dashboard_token="short"))


@pytest.mark.parametrize(
    ("token", "odd"),
    [
        ("abcdefghijklmnopqr\n", "U+000A (a line break) at character 19 of 19"),  # from a file
        ("abcdefgh ijklmnopqr", "U+0020 (space) at character 9 of 19"),
        ("abcdefghijklmnopqré", "U+00E9 (latin small letter e with acute) at character 19"),
    ],
)
def test_a_token_no_sign_in_could_match_is_bad_configuration(token: str, odd: str) -> None:
    """One ending in a line break was taken, and then no sign-in matched it."""
    with pytest.raises(CannotServe) as refused:
        dashboard_token(Settings(dashboard_token=token))
    assert str(refused.value).startswith(
        f"CODEYARD_DASHBOARD_TOKEN: the dashboard token holds {odd}"
    )
    assert token.strip() not in str(refused.value)


def test_help_names_the_settings_and_gives_an_example() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "codeyard", "dashboard", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "CODEYARD_DASHBOARD_TOKEN" in shown.stdout
    assert "Example" in shown.stdout


def test_public_origins_are_a_list_separated_by_commas_or_spaces() -> None:
    setting = " https://codeyard.example.com, http://10.0.0.5:8080  https://b.example,"
    assert public_origins(Settings(dashboard_public_origins=setting)) == (
        "https://codeyard.example.com",
        "http://10.0.0.5:8080",
        "https://b.example",
    )
    assert public_origins(Settings()) == ()


async def test_a_public_origin_with_a_path_is_bad_configuration() -> None:
    """No browser sends a path in Origin: such a setting would only make every POST fail, so
    the dashboard refuses to start (before it connects to anything)."""
    settings = Settings(
        dashboard_token="my-own-token-1234",
        nats_url="nats://127.0.0.1:1",
        dashboard_public_origins="https://codeyard.example.com/dashboard",
    )
    with pytest.raises(CannotServe, match=r"CODEYARD_DASHBOARD_PUBLIC_ORIGINS: .* not an origin"):
        await run_dashboard(settings, Console())
