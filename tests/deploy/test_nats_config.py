"""`codeyard deploy nats-config`: the server configuration and the per-principal env files."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codeyard.bus.credentials import read_credentials
from codeyard.bus.embedded import find_nats_server
from codeyard.bus.permissions import principals
from codeyard.cli import app
from codeyard.deploy.nats_config import ServerOptions, write_deployment


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


def test_the_server_accepts_the_configuration(tmp_path: Path) -> None:
    options = ServerOptions(host="127.0.0.1", port=4333, store_dir=tmp_path / "store")
    deployment = write_deployment(tmp_path, reviewers=("security",), options=options)
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
