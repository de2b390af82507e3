"""Who may use the dashboard: whoever holds its token.

The token comes once, posted by the sign-in page (`sign_in`) or in a URL (`/?token=...`), and
is traded for an HttpOnly session cookie, or in every request as `Authorization: Bearer
<token>` (scripts). A browser sends the cookie
with any request to the dashboard, including ones another site makes it send, so a
state-changing POST authenticated by the cookie must also carry the CSRF token the dashboard
put in its own forms, and must come from the dashboard's own origin or from one of the public
origins it is served at behind a reverse proxy."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from codeyard.odd_characters import first_odd_character

# The session cookie's name is this and the port the dashboard listens on: browsers send a
# host's cookies to each of its ports, so a fixed name had two dashboards on one machine
# overwrite each other's sign-in.
COOKIE_PREFIX = "codeyard_dashboard"
# How long a sign-in lasts: a session cookie that leaked (a shared profile, a backup) opens
# the dashboard that long, not until the token changes. Then the URL with the token again.
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"
DEFAULT_PORTS = {"http": 80, "https": 443}


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
        # One with a line break (read from a file) was taken, and then matched no sign-in.
        odd = first_odd_character(self.token, ascii_only=True)
        if odd is not None:
            raise ValueError(
                f"the dashboard token holds {odd}: a token is printable ASCII without spaces "
                "(the token is not shown)"
            )

    def matches(self, candidate: str | None) -> bool:
        return _same(candidate, self.token)

    def proof(
        self,
        *,
        cookie: str | None,
        authorization: str | None,
        query: str | None,
        now: float | None = None,
    ) -> Proof:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.casefold() == "bearer":  # a scheme is case-insensitive (RFC 9110)
            return Proof.BEARER if self.matches(credentials.strip(" ")) else Proof.NONE
        if query is not None:
            return Proof.QUERY if self.matches(query) else Proof.NONE
        return Proof.COOKIE if self.session_ok(cookie, now) else Proof.NONE

    def session(self, issued: float | None = None) -> str:
        """The sign-in cookie's value, for a sign-in at `issued` (now): that time, and a MAC
        of it. Browsers send 127.0.0.1's cookies to every service on it, whatever its port, so
        the cookie must not be the token, which also opens the dashboard by header or URL: it
        is derived from it, one way. Derived rather than random per process, so a browser stays
        signed in across a restart of the dashboard (`up` restarts it) with the same token,
        and changing the token signs everyone out."""
        at = str(int(time.time() if issued is None else issued))
        return f"{at}.{_derived(self.token, b'codeyard-dashboard-session.' + at.encode())}"

    def session_ok(self, cookie: str | None, now: float | None = None) -> bool:
        """Whether `cookie` is a session this token signed, less than `SESSION_SECONDS` ago."""
        at, dot, _ = (cookie or "").partition(".")
        if not dot or not at.isascii() or not at.isdigit() or len(at) > 12:
            return False
        age = (time.time() if now is None else now) - int(at)
        # (a minute ahead: clocks of the replicas behind one address may differ that much)
        return -60 <= age < SESSION_SECONDS and _same(cookie, self.session(int(at)))

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


def normalised_origin(origin: str) -> str | None:
    """`origin` as scheme://host[:port], lower case and without the scheme's default port, so
    equal origins compare equal however they are written; None if it is not an http(s)
    origin (browsers send `null` for some pages)."""
    try:
        url = urlsplit(origin.strip())
        port = url.port  # raises on a port that is not a number
    except ValueError:
        return None
    scheme, host = url.scheme.lower(), url.hostname  # hostname: lower case, no brackets
    if scheme not in DEFAULT_PORTS or not host or url.username is not None:
        return None
    if url.path not in ("", "/") or url.query or url.fragment:
        return None
    shown = f"[{host}]" if ":" in host else host
    suffix = f":{port}" if port is not None and port != DEFAULT_PORTS[scheme] else ""
    return f"{scheme}://{shown}{suffix}"


def normalised_origins(configured: Iterable[str]) -> frozenset[str]:
    """The origins the dashboard is served at (behind a TLS reverse proxy, the browser's
    address is not the one the dashboard sees), normalised; `ValueError` names one that is
    not an origin, such as a URL with a path, which no browser would ever send."""
    origins = set()
    for origin in configured:
        normal = normalised_origin(origin)
        if normal is None:
            raise ValueError(
                f"{origin!r} is not an origin (scheme://host[:port], http or https, no path)"
            )
        origins.add(normal)
    return frozenset(origins)


def origin_allowed(
    origin: str | None, host: str | None, scheme: str, public: frozenset[str] = frozenset()
) -> bool:
    """A browser names the page a POST comes from in Origin: it must be the dashboard as this
    request reached it, or one of its `public` origins (normalised). None (old clients, curl)
    is let through to the CSRF token check, which a cross-site form cannot pass."""
    if origin is None:
        return True
    given = normalised_origin(origin)
    if given is None:
        return False
    here = normalised_origin(f"{scheme}://{host}") if host else None
    return given == here or given in public
