"""A NATS user and password, and the env files that hand them to a process.

An env file (`KEY=value` lines) serves `docker compose` (`env_file:`), systemd
(`EnvironmentFile=`) and `codeyard` itself, which reads `CODEYARD_NATS_USER` and
`CODEYARD_NATS_PASSWORD` from its environment. Files holding a password are created 0600 before
a byte is written, and the password never appears in a repr or a log line.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

USER_VARIABLE = "CODEYARD_NATS_USER"
PASSWORD_VARIABLE = "CODEYARD_NATS_PASSWORD"
# The coordinators' and the safety gate's alone: see `codeyard.bus.service_key`
SERVICE_KEY_VARIABLE = "CODEYARD_SERVICE_KEY"
# A worker in an account of its own reaches JetStream's API under another name (see
# `codeyard.bus.permissions`): `deploy nats-config` writes it in the workers' env files.
JS_API_VARIABLE = "CODEYARD_NATS_JS_API"
CREDENTIALS_DIR = "credentials"  # beside a generated server configuration


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    service_key: str = field(default="", repr=False)  # the coordinator's and gate's, if any
    js_api: str = ""  # where its JetStream API is, when not at `$JS.API`

    @classmethod
    def generate(cls, user: str) -> Credentials:
        # 256 bits; URL-safe characters need no quoting in env files or the server config
        return cls(user, secrets.token_urlsafe(32))

    def as_env(self) -> dict[str, str]:
        env = {USER_VARIABLE: self.user, PASSWORD_VARIABLE: self.password}
        if self.service_key:
            env[SERVICE_KEY_VARIABLE] = self.service_key
        if self.js_api:
            env[JS_API_VARIABLE] = self.js_api
        return env


def credentials_file(directory: Path, principal: str) -> Path:
    return directory / f"{principal}.env"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only (also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def write_credentials(path: Path, credentials: Credentials) -> None:
    lines = [f"{name}={value}" for name, value in credentials.as_env().items()]
    write_private(path, "\n".join(lines) + "\n")


class CredentialsUnreadable(Exception):
    """An env file of credentials is there but cannot be read (a directory, not UTF-8, not
    ours to read): the setup's mistake, said as such, not as NATS being unreachable. Not an
    OSError, which commands take for a connection failing."""


def read_credentials(path: Path) -> Credentials | None:
    """The credentials in an env file; None if it is missing or lacks either variable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialsUnreadable(
            f"cannot read the NATS credentials in {path}: {reason} (an env file of "
            f"{USER_VARIABLE}=... and {PASSWORD_VARIABLE}=... lines, UTF-8; "
            "CODEYARD_NATS_CREDENTIALS_DIR chooses the directory)"
        ) from exc
    values = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("'\"")
    user, password = values.get(USER_VARIABLE), values.get(PASSWORD_VARIABLE)
    if not user or not password:
        return None
    return Credentials(
        user, password, values.get(SERVICE_KEY_VARIABLE, ""), values.get(JS_API_VARIABLE, "")
    )


# What a NATS URL carries before its host: `user:password@` or a token alone (`token@`).
_USERINFO = re.compile(r"//([^/@,]*)@")


def in_url(url: str) -> Credentials | None:
    """The user and password a NATS_URL carries (`nats://user:password@host:4222`), in its
    first server; None when it carries none (or a token alone)."""
    try:
        parts = urlsplit(url.split(",")[0].strip())
    except ValueError:
        return None
    if not parts.username or parts.password is None:
        return None
    return Credentials(unquote(parts.username), unquote(parts.password))


def shown_url(url: str) -> str:
    """`url` as it may be printed: each server's password (or token) as `***`."""

    def hidden(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        return f"//{user}:***@" if colon else "//***@"

    return _USERINFO.sub(hidden, url)
