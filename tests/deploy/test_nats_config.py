"""`codeyard deploy nats-config`: the server configuration and the per-principal env files."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.credentials import JS_API_VARIABLE, read_credentials
from codeyard.bus.embedded import find_nats_server, free_port
from codeyard.bus.permissions import (
    SERVICE_ACCOUNT,
    SERVICES,
    WORKER_JS_API,
    account_of,
    principals,
)
from codeyard.bus.subjects import RUNS_BUCKET
from codeyard.cli import app
from codeyard.deploy.nats_config import ServerOptions, adopt_global_store, write_deployment


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_principal_gets_a_private_env_file_and_a_user(tmp_path: Path) -> None:
    deployment = write_deployment(tmp_path, reviewers=("security",))
    config = deployment.config_file.read_text()
    assert deployment.principals == principals(("security",))
    assert mode(deployment.config_file) == 0o600
    assert mode(deployment.credentials_dir) == 0o700
    for principal in deployment.principals:
        path = deployment.credentials_file(principal)
        credentials = deployment.credentials(principal)
        assert mode(path) == 0o600
        assert credentials.user == principal
        assert len(credentials.password) >= 40
        assert f'user: "{principal}"' in config
        assert f'password: "{credentials.password}"' in config
        assert credentials.password not in repr(credentials)
    passwords = {deployment.credentials(p).password for p in deployment.principals}
    assert len(passwords) == len(deployment.principals)


def test_running_it_again_keeps_the_passwords(tmp_path: Path) -> None:
    first = write_deployment(tmp_path)
    before = {p: first.credentials(p) for p in first.principals}
    second = write_deployment(tmp_path, reviewers=("style",))
    assert {p: second.credentials(p) for p in first.principals} == before
    assert "review-style" in second.principals


def test_the_coordinator_and_the_gate_alone_share_a_service_key_which_is_kept(
    tmp_path: Path,
) -> None:
    first = write_deployment(tmp_path, reviewers=("style",))
    coordinator = first.credentials("coordinator")
    key = coordinator.service_key
    assert len(key) >= 32
    assert key not in repr(coordinator)
    assert key not in first.config_file.read_text()
    keys = {p: first.credentials(p).service_key for p in first.principals}
    assert {p: k for p, k in keys.items() if k} == {"coordinator": key, "gate": key}
    assert write_deployment(tmp_path).credentials("gate").service_key == key
    # a deployment written before the key: it is added, the passwords kept
    for principal in ("coordinator", "gate"):
        path = first.credentials_file(principal)
        lines = path.read_text().splitlines()
        path.write_text("".join(f"{line}\n" for line in lines if "SERVICE_KEY" not in line))
    assert read_credentials(first.credentials_file("coordinator")) == replace(
        coordinator, service_key=""
    )
    second = write_deployment(tmp_path)
    assert second.credentials("coordinator").password == coordinator.password
    new_key = second.credentials("coordinator").service_key
    assert len(new_key) >= 32
    assert second.credentials("gate").service_key == new_key


@pytest.mark.parametrize("accounts", [True, False])
def test_the_server_accepts_the_configuration(tmp_path: Path, accounts: bool) -> None:
    options = ServerOptions(host="127.0.0.1", port=4333, store_dir=tmp_path / "store")
    deployment = write_deployment(
        tmp_path, reviewers=("security",), options=options, accounts=accounts
    )
    checked = subprocess.run(
        [str(find_nats_server()), "-c", str(deployment.config_file), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_command_writes_the_files_and_prints_no_secret(tmp_path: Path) -> None:
    out = tmp_path / "nats"
    result = CliRunner().invoke(
        app, ["deploy", "nats-config", "--out", str(out), "--reviewer", "security"]
    )
    assert result.exit_code == 0, result.output
    ctl = read_credentials(out / "credentials" / "ctl.env")
    assert ctl is not None
    assert ctl.password not in result.output
    assert "nats-server.conf" in result.output
    assert (out / "credentials" / "review-security.env").exists()

    bad = CliRunner().invoke(app, ["deploy", "nats-config", "--out", str(out), "--reviewer", "X!"])
    assert bad.exit_code == 2


def test_a_reviewer_refused_leaves_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "nats"
    bad = CliRunner().invoke(app, ["deploy", "nats-config", "--out", str(out), "--reviewer", "a b"])
    assert bad.exit_code == 2
    assert not out.exists()  # (its credentials directory was made first)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--out", "", "error: --out '': name a directory"),
        ("--store-dir", " ", "error: --store-dir ' ': name a directory"),
        ("--host", "", "error: --host '': name an address (0.0.0.0 for every interface)"),
        ("--host", "a b", "error: --host 'a b': name an address (0.0.0.0 for every interface)"),
    ],
)
def test_an_empty_place_is_refused_not_taken_for_here_or_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: str, said: str
) -> None:
    """`--out ''` wrote into the current directory; `--host ''` made a server listening on
    every interface; `--store-dir ''` kept the streams wherever the server started."""
    monkeypatch.chdir(tmp_path)
    args = ["deploy", "nats-config", "--out", str(tmp_path / "nats"), option, value]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert refused.output == said + "\n"
    assert list(tmp_path.iterdir()) == []


def test_python_m_codeyard_deploy_is_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "codeyard.deploy", "nats-config", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "nats-server.conf").exists()


def test_each_worker_has_an_account_and_its_env_file_names_its_jetstream_api(
    tmp_path: Path,
) -> None:
    deployment = write_deployment(tmp_path, reviewers=("security",))
    config = deployment.config_file.read_text()
    assert deployment.accounts
    assert "authorization {" not in config
    for principal in deployment.principals:
        assert f'"{account_of(principal)}": {{' in config
        expected = "" if principal in SERVICES else WORKER_JS_API
        assert deployment.credentials(principal).js_api == expected, principal
    assert f"{JS_API_VARIABLE}={WORKER_JS_API}" in deployment.credentials_file("coder").read_text()


def test_a_directory_written_with_one_account_keeps_it_until_told(tmp_path: Path) -> None:
    """Its server's streams are stored under that account: a new layout would hide them."""
    old = write_deployment(tmp_path, accounts=False)
    passwords = {p: old.credentials(p).password for p in old.principals}
    assert "authorization {" in old.config_file.read_text()
    again = write_deployment(tmp_path, reviewers=("style",))
    assert not again.accounts
    assert "\naccounts {" not in again.config_file.read_text()
    assert all(not again.credentials(p).js_api for p in again.principals)

    switched = write_deployment(tmp_path, accounts=True)
    assert switched.accounts
    assert switched.credentials("coder").js_api == WORKER_JS_API
    assert {p: switched.credentials(p).password for p in old.principals} == passwords
    assert write_deployment(tmp_path).accounts  # and kept so


def test_the_command_warns_of_one_account_and_switches_when_told(tmp_path: Path) -> None:
    out = tmp_path / "nats"
    write_deployment(out, accounts=False)
    kept = CliRunner().invoke(app, ["deploy", "nats-config", "--out", str(out)])
    assert kept.exit_code == 0, kept.output
    assert "warning: every user shares one NATS account" in kept.output
    assert "--accounts" in kept.output
    switched = CliRunner().invoke(app, ["deploy", "nats-config", "--out", str(out), "--accounts"])
    assert switched.exit_code == 0, switched.output
    assert "warning" not in switched.output
    assert "\naccounts {" in (out / "nats-server.conf").read_text()


async def test_streams_stored_with_one_account_are_kept_when_handed_to_the_services(
    tmp_path: Path,
) -> None:
    """What `codeyard up` does with the store of an embedded server from before accounts."""
    options = ServerOptions(port=free_port(), store_dir=tmp_path / "store")
    old = write_deployment(tmp_path, options=options, accounts=False)
    with EmbeddedNats(tmp_path, port=options.port, config_file=old.config_file) as server:
        bus = await Bus.connect(server.url, credentials=old.credentials("coordinator"))
        runs = await bus.js.create_key_value(bucket=RUNS_BUCKET)
        await runs.put("run-1", b"kept")
        await bus.close()
    assert adopt_global_store(options.store_dir)
    assert not adopt_global_store(options.store_dir)  # nothing left to hand over
    new = write_deployment(tmp_path, options=options, accounts=True)
    with EmbeddedNats(tmp_path, port=options.port, config_file=new.config_file) as server:
        bus = await Bus.connect(server.url, credentials=new.credentials("coordinator"))
        try:
            runs = await bus.js.key_value(RUNS_BUCKET)
            assert (await runs.get("run-1")).value == b"kept"
        finally:
            await bus.close()


def test_a_store_already_in_the_services_account_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "jetstream" / "$G").mkdir(parents=True)
    (tmp_path / "jetstream" / SERVICE_ACCOUNT / "streams").mkdir(parents=True)
    assert not adopt_global_store(tmp_path)
    assert (tmp_path / "jetstream" / "$G").is_dir()
    assert not adopt_global_store(tmp_path / "missing")
