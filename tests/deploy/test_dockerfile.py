"""deploy/Dockerfile, read as text (the image is not built here: no registry to pull from)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deployment_files import DEPLOY

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of every instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), " ".join(arguments.split())))
    return found


def safe_directory_commands() -> list[str]:
    """The shell commands of RUN instructions that configure git's safe.directory."""
    return [
        command.strip()
        for keyword, arguments in instructions()
        if keyword == "RUN"
        for command in arguments.split("&&")
        if "safe.directory" in command
    ]


def test_git_trusts_the_mounted_repositories_system_wide() -> None:
    """Debian bookworm's git refuses a repository another user owns ("detected dubious
    ownership"); a repository bind-mounted from the host is never owned by the image's uid
    10001, so `codeyard run --repo /repos/NAME` and the coordinator's clone of it failed."""
    [command] = safe_directory_commands()
    assert command.split()[:4] == ["git", "config", "--system", "--add"]
    keywords = [keyword for keyword, _ in instructions()]
    runs_at = next(
        i for i, (k, a) in enumerate(instructions()) if k == "RUN" and "safe.directory" in a
    )
    # /etc/gitconfig is root's: it must be written before the image drops to its user
    assert runs_at < keywords.index("USER")
    assert any(k == "RUN" and "install" in a and " git " in f"{a} " for k, a in instructions())


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_safe_directory_is_every_directory(tmp_path: Path) -> None:
    """The command, run by a shell as the build runs it, stores the value `*` (quoted: an
    unquoted `*` would be the names of the files where it runs)."""
    [command] = safe_directory_commands()
    (tmp_path / "a-file").write_text("")
    system = tmp_path / "gitconfig"
    env = {**os.environ, "GIT_CONFIG_SYSTEM": str(system)}
    subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True)
    stored = subprocess.run(
        ["git", "config", "--system", "--get-all", "safe.directory"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert stored.stdout.splitlines() == ["*"]


def test_pid_1_is_an_init_that_reaps_orphans() -> None:
    """codeyard as PID 1 never waited for the process each bwrap sandbox leaves to it: one
    zombie per sandbox run in the tester's and coordinators' containers (Kubernetes has no
    `init: true`; the image itself must bring one)."""
    [(_, entrypoint)] = [(k, a) for k, a in instructions() if k == "ENTRYPOINT"]
    assert entrypoint == '["tini", "--", "codeyard"]'
    installs = " ".join(a for k, a in instructions() if k == "RUN" and "apt-get install" in a)
    assert " tini " in f"{installs} "


def test_the_sandboxes_python_has_pytest() -> None:
    """bwrap runs the Python that runs codeyard; without pytest there, `python -m pytest` said
    "No module named pytest" and every Python task failed its tests."""
    [install] = [a for k, a in instructions() if k == "RUN" and "pip install" in a]
    assert "pytest" in install.split()


def test_the_image_checks_that_a_service_s_event_loop_turns() -> None:
    """Each service beats in CODEYARD_HEARTBEAT_FILE (codeyard/liveness.py); HEALTHCHECK reads
    it, and a container stuck so is `unhealthy`."""
    env = " ".join(a for k, a in instructions() if k == "ENV")
    assert "CODEYARD_HEARTBEAT_FILE=/tmp/codeyard-heartbeat" in env
    [check] = [a for k, a in instructions() if k == "HEALTHCHECK"]
    assert check.endswith('CMD ["python", "-m", "codeyard.liveness"]')
