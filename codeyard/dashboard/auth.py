"""Who may use the dashboard: whoever holds its token.

The token comes once in a URL (`/?token=...`), which trades it for an HttpOnly session cookie,
or in every request as `Authorization: Bearer <token>` (scripts). A browser sends the cookie
with any request to the dashboard, including ones another site makes it send, so a
state-changing POST authenticated by the cookie must also carry the CSRF token the dashboard
put in its own forms, and must not come from another origin."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum

# The session cookie's name is this and the port the dashboard listens on: browsers send a
# host's cookies to each of its ports, so a fixed name had two dashboards on one machine
# overwrite each other's sign-in.
COOKIE_PREFIX = "codeyard_dashboard"
CSRF_FIELD = "csrf"


class Proof(Enum):
    """How a request proved it holds the token."""

    NONE = "none"
    COOKIE = "cookie"
    BEARER = "bearer"
    QUERY = "query"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    return f"{COOKIE_PREFIX}_{port}"


@dataclass(frozen=True)
class TokenCheck:
    token: str

    def __post_init__(self) -> None:
        if len(self.token) < 16:  # guessable tokens would make the check pointless
            raise ValueError("the dashboard token must be at least 16 characters long")

    def matches(self, candidate: str | None) -> bool:
        return _same(candidate, self.token)

    def proof(self, *, cookie: str | None, authorization: str | None, query: str | None) -> Proof:
        if authorization is not None and authorization.startswith("Bearer "):
            return Proof.BEARER if self.matches(authorization[len("Bearer ") :]) else Proof.NONE
        if query is not None:
            return Proof.QUERY if self.matches(query) else Proof.NONE
        return Proof.COOKIE if _same(cookie, self.session) else Proof.NONE

    @property
    def session(self) -> str:
        """The sign-in cookie's value. Browsers send 127.0.0.1's cookies to every service on
        it, whatever its port, so the cookie must not be the token, which also opens the
        dashboard by header or URL: it is derived from it, one way. Derived rather than random
        per process, so a browser stays signed in across a restart of the dashboard (`up`
        restarts it) with the same token, and changing the token signs everyone out."""
        return _derived(self.token, b"codeyard-dashboard-session")

    @property
    def csrf(self) -> str:
        """The token of the dashboard's own forms: derived from the secret, so it needs no
        server-side session, and useless to learn the secret from."""
        return _derived(self.token, b"codeyard-dashboard-csrf")

    def csrf_ok(self, candidate: str | None) -> bool:
        return _same(candidate, self.csrf)


def _derived(token: str, label: bytes) -> str:
    return hmac.new(token.encode(), label, hashlib.sha256).hexdigest()


def _same(candidate: str | None, secret: str) -> bool:
    """Whether `candidate` is `secret`, in constant time. aiohttp hands over bytes that are not
    UTF-8 (in a cookie or a header) as lone surrogates, which cannot be encoded: such a
    candidate is not the secret (which is encodable), rather than an error and a 500."""
    if candidate is None:
        return False
    try:
        given = candidate.encode()
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, secret.encode())


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """A browser names the page a POST comes from in Origin; none (old clients, curl) is let
    through to the CSRF token check, which a cross-site form cannot pass."""
    if origin is None:
        return True
    return host is not None and origin == f"{scheme}://{host}"
