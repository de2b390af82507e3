"""Configuration from the environment (`CODEYARD_*`, plus the conventional `NATS_URL`)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from codeyard.bus.credentials import (
    CREDENTIALS_DIR,
    Credentials,
    credentials_file,
    read_credentials,
)
from codeyard.bus.topology import DAY, Topology

log = logging.getLogger(__name__)

# Under the data dir: the embedded server's store, configuration and per-principal credentials.
EMBEDDED_DIR = "nats"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("codeyard"))


# Upper bounds of durations: far beyond any use, and far below what overflows where they end up
# (NATS takes durations as int64 nanoseconds, about 292 years). `inf` is refused outright
# (allow_inf_nan): it passed `gt=0` and crashed `up` converting it.
MAX_ACK_WAIT = 86400.0  # workers heartbeat long work, so this only delays a dead one's redelivery
MAX_LEADER_TTL = 3600.0  # how long runs wait after a leader died
MAX_RETENTION_DAYS = 36500.0
MAX_APPROVAL_TIMEOUT = 365 * DAY


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CODEYARD_", extra="ignore", allow_inf_nan=False)

    nats_url: str = Field(
        default="",
        validation_alias=AliasChoices("NATS_URL", "CODEYARD_NATS_URL"),
        description="NATS server to use; empty starts an embedded nats-server",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="embedded server store, caches, reports"
    )
    # (not 0, "any free port": commands would then look for the server at port 0)
    nats_port: int = Field(default=4222, ge=1, le=65535, description="embedded server port")
    nats_user: str = Field(default="", description="NATS user of this process; empty: see below")
    nats_password: SecretStr = Field(default=SecretStr(""), description="its password")
    service_key: SecretStr = Field(
        default=SecretStr(""),
        description="coordinators and the safety gate: the key of work items' proofs and of "
        "sealed answers to approvals; empty: the one in the process's env file, if any",
    )
    nats_js_api: str = Field(
        default="",
        description="a worker in a NATS account of its own: the subject prefix its account "
        "imports JetStream's API under (`deploy nats-config` writes it); empty: `$JS.API`",
    )
    nats_credentials_dir: Path | None = Field(
        default=None,
        description="per-principal env files from `codeyard deploy nats-config`; `up` hands "
        "each child its own, other commands use their principal's (the CLI: ctl)",
    )
    ack_wait: float = Field(
        default=30.0,
        gt=0,
        le=MAX_ACK_WAIT,
        description="seconds before unacked work is redelivered",
    )
    leader_ttl: float = Field(
        default=5.0,
        gt=0,
        le=MAX_LEADER_TTL,
        description="seconds a dead coordinator leader keeps the lease",
    )
    local_llm: bool = Field(
        default=True,
        description="with no LLM endpoint configured, serve the bundled SmolLM2 (codeyard[local])",
    )
    event_retention_days: float = Field(
        default=30.0, gt=0, le=MAX_RETENTION_DAYS, description="events stream max age"
    )
    artifact_retention_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="days an unused snapshot bundle or stored patch is kept (in the object "
        "store and in workers' caches); unset: event_retention_days",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="copies of every stream, bucket and the object store (3 on a 3-node "
        "JetStream cluster); set before they are first created",
    )
    sandbox: Literal["auto", "docker", "bwrap", "process"] = Field(
        default="auto",
        description="backend for generated code: auto = docker, else bwrap, else refuse",
    )
    sandbox_image: str = Field(
        default="codeyard-sandbox:bookworm",
        min_length=1,
        description="image of the docker backend (scripts/build-sandbox-image.sh builds it)",
    )
    docker_host: str = Field(
        default="",
        description="Docker engine; empty: DOCKER_HOST, else /run/codeyard-docker/docker.sock "
        "when it exists, else Docker's default socket",
    )
    allow_unsandboxed: bool = Field(
        default=False,
        description="permit sandbox=process, which runs generated code with no isolation",
    )
    approval_timeout: float = Field(
        default=86400.0,
        gt=0,
        le=MAX_APPROVAL_TIMEOUT,
        description="seconds an approval may wait before it is denied",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="serve Prometheus metrics on this port (0: off); `up` gives its children "
        "consecutive ports from here",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics listen on")
    log_format: Literal["text", "json"] = Field(
        default="text", description="service logs: text, or one JSON object per line"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="event loop of services: uvloop, or the standard library's"
    )
    heartbeat_file: Path | None = Field(
        default=None,
        description="file a service's event loop touches every 2 s (codeyard.liveness); "
        "`codeyard up` sets one per service",
    )
    dashboard_host: str = Field(default="127.0.0.1", description="address the dashboard serves on")
    dashboard_port: int = Field(default=8700, ge=0, le=65535, description="dashboard port")
    dashboard_token: SecretStr = Field(
        default=SecretStr(""),
        description="token that opens the dashboard; empty: a new one at each start, printed",
    )
    dashboard_public_origins: str = Field(
        default="",
        description="where browsers reach the dashboard through a reverse proxy, separated by "
        "commas (e.g. https://codeyard.example.com): Approve/Deny from there pass the origin check",
    )
    dashboard_user_header: str = Field(
        default="",
        description="a header the reverse proxy in front of the dashboard sets to who signed in "
        "there (e.g. X-Forwarded-User): approvals answered on the dashboard are recorded as "
        "theirs, and refused without it; empty: recorded as by 'dashboard'",
    )

    @field_validator("dashboard_user_header")
    @classmethod
    def _header_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]*", name):
            raise PydanticCustomError(
                "header_name",
                "not an HTTP header name (letters, digits and -, like X-Forwarded-User)",
            )
        return name

    @field_validator("data_dir", "nats_credentials_dir", mode="before")
    @classmethod
    def _named_directory(cls, directory: object) -> object:
        # Empty, Path("") is the current directory: `up` put its server's store and credentials
        # wherever it was started, and commands started elsewhere found none of them.
        if isinstance(directory, str) and not directory.strip():
            raise PydanticCustomError(
                "empty_directory", "empty; name a directory, or unset it for the default"
            )
        # Relative, it would be that too: each command's own, from wherever it was started.
        if isinstance(directory, str | Path) and not Path(directory).expanduser().is_absolute():
            raise PydanticCustomError(
                "relative_directory",
                "relative, so each command would find it under the directory it was started "
                "in; give an absolute path",
            )
        return Path(directory).expanduser() if isinstance(directory, str | Path) else directory

    @field_validator("dashboard_host", "metrics_host")
    @classmethod
    def _named_address(cls, host: str) -> str:
        # Empty, a server listens on every interface: a dashboard that approves commands, open
        # to the network, for a variable set empty in a compose file.
        if not host.strip():
            raise PydanticCustomError(
                "empty_host",
                "empty; name an address (0.0.0.0 for every interface), or unset it for 127.0.0.1",
            )
        return host

    @field_validator("nats_url")
    @classmethod
    def _nats_servers(cls, url: str) -> str:
        # Taken as it is, a URL of another scheme or an impossible port failed every connection
        # attempt, reported as "cannot reach NATS" (and retried for ever under compose).
        servers = [server.strip() for server in url.split(",")] if url else []
        if len({server.startswith(("ws://", "wss://")) for server in servers}) > 1:
            raise PydanticCustomError(
                "nats_url", "websocket (ws://, wss://) and other servers may not be mixed"
            )
        for server in servers:  # (none: codeyard up's server)
            problem = nats_server_problem(server)
            if problem:  # (quoting the server as it is safe to show: see `invalid_settings`)
                raise PydanticCustomError(
                    "nats_url", "{problem}", {"problem": problem, SHOWS_INPUT: True}
                )
        return url

    @field_validator("nats_credentials_dir")
    @classmethod
    def _existing_directory(cls, directory: Path | None) -> Path | None:
        # A directory that is not there meant "no credentials": the process connected without a
        # user and said NATS was unreachable (is `codeyard up` running?) while NATS ran.
        if directory is not None and not directory.is_dir():
            raise PydanticCustomError(
                "no_credentials_dir",
                "no such directory; expected DIR/credentials of `codeyard deploy nats-config "
                "--out DIR`",
            )
        return directory

    def server_url(self) -> str:
        """NATS_URL, else the embedded server of `codeyard up` on this machine."""
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    def snapshot_cache_dir(self) -> Path:
        """Where a worker keeps the runs' code it fetched (shared by its processes)."""
        return self.data_dir / "cache" / "snapshots"

    def artifact_retention(self) -> float:
        """Seconds garbage collection keeps what nothing uses: by default as long as the events,
        so the report of any run whose events are still there finds its patches."""
        days = self.artifact_retention_days or self.event_retention_days
        return days * DAY

    def embedded_dir(self) -> Path:
        return self.data_dir / EMBEDDED_DIR

    def credentials_dir(self) -> Path | None:
        """Where per-principal credentials are: the configured directory, else (no NATS_URL)
        those `codeyard up` generated for its embedded server."""
        if self.nats_credentials_dir is not None:
            return self.nats_credentials_dir
        return None if self.nats_url else self.embedded_dir() / CREDENTIALS_DIR

    def credentials(self, principal: str) -> Credentials | None:
        """This process's NATS credentials: CODEYARD_NATS_USER/_PASSWORD if set, else
        `principal`'s env file in `credentials_dir()`, else none (no authentication)."""
        if self.nats_user:
            return Credentials(
                self.nats_user,
                self.nats_password.get_secret_value(),
                self.service_key.get_secret_value(),
                self.nats_js_api,
            )
        directory = self.credentials_dir()
        if directory is None:
            return None
        path = credentials_file(directory, principal)
        found = read_credentials(path)
        if found is None and self.nats_credentials_dir is not None:
            # (a plugin reviewer left out of `deploy nats-config --reviewer NAME`, say)
            log.warning("no credentials in %s: connecting without any", path)
        return found

    def topology(self) -> Topology:
        return Topology(
            ack_wait=self.ack_wait,
            leader_ttl=self.leader_ttl,
            event_max_age=self.event_retention_days * DAY,
            replicas=self.replicas,
            approval_timeout=self.approval_timeout,
        )


NATS_SCHEMES = ("nats", "tls", "ws", "wss")
# In the context of a validator's error: its message shows what of the input may be shown.
SHOWS_INPUT = "shows_input"


def nats_server_problem(server: str) -> str:
    """Why `server` (one of NATS_URL's, separated by commas) is no NATS server address, or ""
    when it is one: nats://host:port, tls://, ws:// or wss://, or host:port (nats-py adds
    nats://)."""
    if not server:
        return "a server address is empty (servers are separated by commas)"
    parsed = urlsplit(server if "://" in server else f"nats://{server}")
    if parsed.password:  # never shown
        server = server.replace(f":{parsed.password}@", ":***@", 1)
    if parsed.scheme not in NATS_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in NATS_SCHEMES)
        return f"{server!r} is not a NATS server address ({schemes} host:port)"
    try:
        parsed.port  # noqa: B018  (raises on a port out of range)
    except ValueError:
        return f"{server!r} has no valid port (1-65535)"
    if not parsed.hostname:
        return f"{server!r} names no host"
    return ""


def invalid_settings(error: ValidationError) -> list[str] | None:
    """What is wrong in the environment, one line per setting, naming its variable, e.g.
    `CODEYARD_ACK_WAIT: Input should be greater than 0 (got '-1')`: what the CLI prints
    instead of pydantic's report (which names fields, not variables). Values of secrets are
    not repeated. None when `error` is not about Settings or LLMSettings."""
    from codeyard.llm.settings import LLMSettings

    models: dict[str, type[BaseSettings]] = {m.__name__: m for m in (Settings, LLMSettings)}
    model = models.get(error.title)
    if model is None:
        return None
    lines = []
    for problem in error.errors(include_url=False):
        where = str(problem["loc"][0]) if problem["loc"] else ""
        field = model.model_fields.get(where)
        if field is None:  # read under an alias; what it holds may be a secret's, or quoted
            aliased = _aliased(model, where)
            variable = _variable(model, where, aliased.validation_alias) if aliased else where
            secret = True
        else:
            variable = _variable(model, where, field.validation_alias)
            secret = SecretStr in (field.annotation, *get_args(field.annotation))
        given = f" (got {str(problem['input'])[:80]!r})"
        shown = problem.get("ctx", {}).get(SHOWS_INPUT)
        if secret or shown or given in problem["msg"]:  # (a validator may quote the input)
            given = ""
        lines.append(f"{variable or error.title}: {problem['msg']}{given}")
    return lines


def _aliased(model: type[BaseSettings], alias: str) -> FieldInfo | None:
    """The field read from the variables of which `alias` is the first (pydantic names a
    field read through `AliasChoices` by its first choice, whichever was read)."""
    for field in model.model_fields.values():
        choices = field.validation_alias
        if isinstance(choices, AliasChoices) and choices.choices[0] == alias:
            return field
    return None


def _variable(model: type[BaseSettings], field: str, alias: object) -> str:
    if isinstance(alias, AliasChoices):  # the variable that was read: the first one set
        names = [choice for choice in alias.choices if isinstance(choice, str)]
        given = {name.upper() for name in os.environ}
        alias = next((name for name in names if name.upper() in given), alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()
