"""Credentials a NATS URL carries, and the URL as it may be printed."""

from __future__ import annotations

from codeyard.bus.credentials import Credentials, in_url, shown_url


def test_a_url_s_password_or_token_is_not_printed() -> None:
    assert shown_url("nats://ctl:s3cret@127.0.0.1:4222") == "nats://ctl:***@127.0.0.1:4222"
    assert shown_url("nats://t0ken@host:4222") == "nats://***@host:4222"
    cluster = "nats://a:p1@n1:4222, nats://a:p2@n2:4222"
    assert shown_url(cluster) == "nats://a:***@n1:4222, nats://a:***@n2:4222"
    assert shown_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_the_credentials_a_url_carries() -> None:
    assert in_url("nats://ctl:p%40ss@127.0.0.1:4222") == Credentials("ctl", "p@ss")
    assert in_url("nats://ctl:pw@n1:4222,nats://ctl:pw@n2:4222") == Credentials("ctl", "pw")
    assert in_url("nats://token@host:4222") is None  # a token: no user to name an inbox
    assert in_url("nats://127.0.0.1:4222") is None
    assert in_url("nats://[::1:4222") is None  # not a URL: nats-py says so
