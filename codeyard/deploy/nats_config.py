"""A nats-server configuration with one user per principal, and an env file per principal.

`write_deployment(out)` writes `out/nats-server.conf` (JetStream on, the users and their
permissions from `codeyard.bus.permissions`, each worker in an account of its own) and
`out/credentials/<principal>.env`. Passwords come from the `secrets` module, as does the key
the coordinators and the safety gate share (in their env files only); files that hold them
are 0600. Running it again keeps every password already written, so running services keep
working, and rewrites the server configuration, so a codeyard upgrade's changed permissions
take effect on the next server start.

Passwords are stored in clear in the server configuration (nats-server also accepts bcrypt
hashes; that needs a bcrypt library codeyard does not depend on): keep the directory private.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from codeyard.bus.credentials import (
    CREDENTIALS_DIR,
    Credentials,
    credentials_file,
    read_credentials,
    write_credentials,
    write_private,
)
from codeyard.bus.permissions import (
    COORDINATOR,
    GATE,
    SERVICE_ACCOUNT,
    WORKER_JS_API,
    Grants,
    account_of,
    answers_stream,
    crossings,
    grants_for,
    grants_through,
    principals,
    through,
)
from codeyard.bus.service_key import ServiceKey

CONFIG_FILE = "nats-server.conf"
SERVICE_KEY_HOLDERS = (COORDINATOR, GATE)  # see `codeyard.bus.service_key`


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 4222
    store_dir: Path = Path("/data")  # the server keeps its streams in STORE_DIR/jetstream
    server_name: str = "codeyard"


@dataclass(frozen=True)
class Deployment:
    config_file: Path
    credentials_dir: Path
    principals: tuple[str, ...]
    accounts: bool = True  # whether each worker has an account of its own

    def credentials_file(self, principal: str) -> Path:
        return credentials_file(self.credentials_dir, principal)

    def credentials(self, principal: str) -> Credentials:
        found = read_credentials(self.credentials_file(principal))
        if found is None:
            raise FileNotFoundError(f"no credentials for {principal} in {self.credentials_dir}")
        return found


def _quoted(value: str) -> str:
    # JSON strings are valid nats-server config strings; quoting keeps `$JS...` from being
    # read as a variable reference
    return json.dumps(value)


def _subjects(values: Sequence[str], indent: str) -> str:
    return "[\n" + "".join(f"{indent}  {_quoted(v)}\n" for v in values) + f"{indent}]"


def _user(credentials: Credentials, grants: Grants, indent: str = "    ") -> str:
    pad = indent + "    "
    lines = [
        f"{indent}{{",
        f"{indent}  user: {_quoted(credentials.user)}",
        f"{indent}  password: {_quoted(credentials.password)}",
        f"{indent}  permissions: {{",
        f"{pad}publish: {{ allow: {_subjects(grants.publish, pad)} }}",
        f"{pad}subscribe: {{ allow: {_subjects(grants.subscribe, pad)} }}",
    ]
    if grants.allow_responses:
        lines.append(f"{pad}allow_responses: true")
    lines += [f"{indent}  }}", f"{indent}}}"]
    return "\n".join(lines)


def _renamed(subject: str) -> str:
    """The import's `to`, for a subject a worker names otherwise (see `WORKER_JS_API`)."""
    local = through(subject, WORKER_JS_API)
    return f", to: {_quoted(local)}" if local != subject else ""


def _accounts(users: Sequence[tuple[Credentials, Grants]]) -> list[str]:
    """The services' account, with JetStream and an export of each subject some worker is
    granted (to those workers' accounts only), then an account per worker importing them."""
    services = [(c, g) for c, g in users if account_of(c.user) == SERVICE_ACCOUNT]
    workers = [
        (c, g, crossings(c.user, g)) for c, g in users if account_of(c.user) != SERVICE_ACCOUNT
    ]
    exported: dict[tuple[str, str], list[str]] = {}
    for credentials, _, crossing in workers:
        account = account_of(credentials.user)
        for kind, subjects in (("service", crossing.services), ("stream", crossing.streams)):
            for subject in subjects:
                exported.setdefault((kind, subject), []).append(account)
    exports = []
    for (kind, subject), accounts in exported.items():
        streamed = ", response_type: stream" if answers_stream(subject) else ""
        listed = ", ".join(_quoted(a) for a in accounts)
        exports.append(f"      {{ {kind}: {_quoted(subject)}{streamed}, accounts: [{listed}] }}")
    lines = [
        f"  {_quoted(SERVICE_ACCOUNT)}: {{",
        "    jetstream: enabled",
        "    users: [",
        *(_user(credentials, grants, " " * 6) for credentials, grants in services),
        "    ]",
        "    exports: [",
        *exports,
        "    ]",
        "  }",
    ]
    origin = _quoted(SERVICE_ACCOUNT)
    for credentials, grants, crossing in workers:
        imports = [
            f"      {{ service: {{ account: {origin}, subject: {_quoted(subject)} }}"
            f"{_renamed(subject)} }}"
            for subject in crossing.services
        ]
        imports += [
            f"      {{ stream: {{ account: {origin}, subject: {_quoted(subject)} }} }}"
            for subject in crossing.streams
        ]
        lines += [
            f"  {_quoted(account_of(credentials.user))}: {{",
            "    users: [",
            _user(credentials, grants_through(grants, WORKER_JS_API), " " * 6),
            "    ]",
            "    imports: [",
            *imports,
            "    ]",
            "  }",
        ]
    return lines


def render_config(
    users: Sequence[tuple[Credentials, Grants]], options: ServerOptions, *, accounts: bool = True
) -> str:
    """The nats-server configuration text; it holds passwords. With `accounts`, every worker
    has an account of its own (see `codeyard.bus.permissions`); without, every user is in the
    server's one global account, as configurations written before accounts were."""
    if accounts:
        principals_block = ["accounts {", *_accounts(users), "}"]
    else:
        principals_block = [
            "authorization {",
            "  users: [",
            *(_user(credentials, grants) for credentials, grants in users),
            "  ]",
            "}",
        ]
    return "\n".join(
        [
            "# Generated by `codeyard deploy nats-config`: regenerate it rather than edit it.",
            "# Holds passwords: keep it private (0600).",
            f"listen: {_quoted(f'{options.host}:{options.port}')}",
            f"server_name: {_quoted(options.server_name)}",
            "jetstream {",
            f"  store_dir: {_quoted(str(options.store_dir))}",
            "}",
            *principals_block,
            "",
        ]
    )


def _service_key(directory: Path) -> str:
    """The key the coordinators and the gate share: the one in their files, else a new one."""
    for principal in SERVICE_KEY_HOLDERS:
        found = read_credentials(credentials_file(directory, principal))
        if found is not None and found.service_key:
            return found.service_key
    return ServiceKey.new_key()


def _written_with_accounts(config: Path) -> bool | None:
    """Whether the configuration at `config` gives workers accounts of their own; None when
    there is none yet."""
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return "\naccounts {" in text


def write_deployment(
    out: Path,
    *,
    reviewers: Sequence[str] = (),
    options: ServerOptions | None = None,
    accounts: bool | None = None,
) -> Deployment:
    """Write (or refresh) the server configuration and every principal's credentials in
    `out`, keeping the passwords of principals that already have an env file there.

    `accounts`: whether each worker gets an account of its own. None keeps what a
    configuration already in `out` does (one written before accounts existed keeps its single
    account: its server's streams are stored under that account, see `adopt_global_store`),
    and gives accounts to a new one."""
    options = options or ServerOptions()
    names = principals(tuple(reviewers))  # (refused before anything is written)
    config = out / CONFIG_FILE
    out.mkdir(parents=True, exist_ok=True)
    if accounts is None:
        accounts = _written_with_accounts(config) is not False
    directory = out / CREDENTIALS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    users = []
    key = _service_key(directory)
    for principal in names:
        path = credentials_file(directory, principal)
        found = read_credentials(path)
        credentials = found
        if credentials is None or credentials.user != principal:
            credentials = Credentials.generate(principal)
        worker = account_of(principal) != SERVICE_ACCOUNT
        credentials = replace(
            credentials,
            # (the key is also added to the files of a deployment made before it)
            service_key=key if principal in SERVICE_KEY_HOLDERS else credentials.service_key,
            js_api=WORKER_JS_API if accounts and worker else "",
        )
        if credentials != found:
            write_credentials(path, credentials)
        users.append((credentials, grants_for(principal)))
    write_private(config, render_config(users, options, accounts=accounts))
    return Deployment(config, directory, names, accounts)


def adopt_global_store(store_dir: Path) -> bool:
    """Hand the streams a server stored for users without accounts (the global account,
    `$G`) to the services' account, under `store_dir` (a server's `store_dir`: it keeps each
    account's streams in `store_dir/jetstream/<account>`). Only while no server uses it.
    Whether there was anything to hand over."""
    accounts = store_dir / "jetstream"
    old, new = accounts / "$G", accounts / SERVICE_ACCOUNT
    if not old.is_dir() or new.exists():
        return False
    old.rename(new)
    return True
