"""Choosing the backend from the settings: docker, else bwrap, else a refusal naming both;
explicit choices are respected and the process backend needs its opt-in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from codeyard.config import Settings
from codeyard.sandbox import (
    BwrapSandbox,
    DockerSandbox,
    ProcessSandbox,
    SandboxUnavailable,
    default_sandbox,
)


@pytest.fixture
def no_docker(tmp_path: Path) -> str:
    """A Docker host that does not exist (a unix socket path nobody listens on)."""
    return f"unix://{tmp_path}/no-docker.sock"


def test_auto_picks_docker_when_it_works(docker_sandbox: DockerSandbox) -> None:
    chosen = default_sandbox(Settings(sandbox="auto", docker_host=docker_sandbox.docker_host))
    assert isinstance(chosen, DockerSandbox)
    assert chosen.name == "docker"


def test_auto_falls_back_to_bwrap_when_docker_is_unreachable(
    bwrap_sandbox: BwrapSandbox, no_docker: str, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = default_sandbox(Settings(sandbox="auto", docker_host=no_docker))
    assert isinstance(chosen, BwrapSandbox)
    unset = Settings(docker_host=no_docker)
    unset.model_fields_set.discard("docker_host")  # as a default that no engine answers at
    caplog.clear()  # (the warning above: a docker host was set)
    with caplog.at_level(logging.INFO, logger="codeyard.sandbox.selection"):
        default_sandbox(unset)  # docker not asked for: the usual case
    # one short line, not docker's whole refusal (its cause and how to start an engine)
    [said] = [record for record in caplog.records if record.name.endswith("selection")]
    assert said.levelno == logging.INFO
    assert said.getMessage() == (
        "bubblewrap sandbox (docker is not available here; CODEYARD_SANDBOX=docker says why)"
    )


def test_auto_falls_back_to_bwrap_when_the_image_is_missing(
    bwrap_sandbox: BwrapSandbox, docker_sandbox: DockerSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(docker_host=docker_sandbox.docker_host, sandbox_image="codeyard:nope")
    with caplog.at_level(logging.INFO, logger="codeyard.sandbox.selection"):
        assert isinstance(default_sandbox(settings), BwrapSandbox)
    # A typo in the image's name changed the isolation with nothing said.
    [said] = caplog.records
    assert said.levelno == logging.WARNING
    assert said.getMessage().startswith(
        "bubblewrap sandbox instead of docker although CODEYARD_DOCKER_HOST and "
        "CODEYARD_SANDBOX_IMAGE are set; docker: the sandbox image codeyard:nope is not in"
    ), said.getMessage()


def test_auto_refuses_naming_every_backend_and_why(tmp_path: Path, no_docker: str) -> None:
    with pytest.raises(SandboxUnavailable) as refused:
        default_sandbox(Settings(docker_host=no_docker), bwrap=tmp_path / "no-bwrap")
    message = str(refused.value)
    assert "docker:" in message
    assert no_docker in message
    assert "scripts/docker-engine.sh" in message
    assert "bwrap:" in message
    assert "apt-get install -y bubblewrap" in message
    assert "process" not in message.split("bwrap:")[1]  # never offered as a fallback


def test_an_explicit_choice_is_respected(
    bwrap_sandbox: BwrapSandbox, docker_sandbox: DockerSandbox, no_docker: str
) -> None:
    host = docker_sandbox.docker_host
    assert isinstance(default_sandbox(Settings(sandbox="bwrap", docker_host=host)), BwrapSandbox)
    assert isinstance(default_sandbox(Settings(sandbox="docker", docker_host=host)), DockerSandbox)
    # docker asked for and unreachable: refused, not replaced by bwrap
    with pytest.raises(SandboxUnavailable, match="no Docker engine answers"):
        default_sandbox(Settings(sandbox="docker", docker_host=no_docker))


def test_process_needs_its_opt_in() -> None:
    with pytest.raises(SandboxUnavailable) as refused:
        default_sandbox(Settings(sandbox="process"))
    assert str(refused.value).startswith("refusing to run generated code without a sandbox: ")
    # said in the words of a configuration, not of the code behind it
    assert "set CODEYARD_ALLOW_UNSANDBOXED=1 as well as CODEYARD_SANDBOX=process" in str(
        refused.value
    )
    assert "opt_in" not in str(refused.value)
    chosen = default_sandbox(Settings(sandbox="process", allow_unsandboxed=True))
    assert isinstance(chosen, ProcessSandbox)
    # the opt-in alone changes nothing: auto never picks the process backend
    assert not isinstance(default_sandbox_or_none(Settings(allow_unsandboxed=True)), ProcessSandbox)


def default_sandbox_or_none(settings: Settings) -> object:
    try:
        return default_sandbox(settings)
    except SandboxUnavailable:
        return None


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEYARD_SANDBOX", "process")
    monkeypatch.setenv("CODEYARD_ALLOW_UNSANDBOXED", "1")
    monkeypatch.setenv("CODEYARD_SANDBOX_IMAGE", "mine:latest")
    monkeypatch.setenv("CODEYARD_DOCKER_HOST", "unix:///somewhere.sock")
    settings = Settings()
    assert settings.sandbox == "process"
    assert settings.allow_unsandboxed
    assert settings.sandbox_image == "mine:latest"
    assert settings.docker_host == "unix:///somewhere.sock"
    monkeypatch.setenv("CODEYARD_SANDBOX", "chroot")
    with pytest.raises(ValidationError, match="sandbox"):
        Settings()
