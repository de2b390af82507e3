"""docker-compose.yml and its overlays: valid for Debian's docker-compose, and consistent with
the code (commands, settings, principals) and with Prometheus's scrape configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeyard.agents.roles import AGENT_ROLES
from codeyard.deploy.nats_config import ServerOptions, write_deployment
from tests.deploy.deployment_files import (
    CODEYARD_IMAGE,
    COMPOSE_FILE,
    DEPLOY,
    OVERLAYS,
    PLUGIN_REVIEWERS,
    PROMETHEUS,
    codeyard_command,
    known_principals,
    llm_env_names,
    load_yaml,
    setting_env_names,
    worker_grace,
)

DOCKER_COMPOSE = shutil.which("docker-compose")
# What the files require from the shell running compose (`${VAR:?...}`).
REQUIRED_ENV = {
    "CODEYARD_DASHBOARD_TOKEN": "test-token",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
    "DOCKER_GID": "999",
}


def services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return loaded


def codeyard_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services().items()
        if str(service.get("image", "")).split(":")[0] == CODEYARD_IMAGE
    }


def long_running(name: str, service: dict[str, Any]) -> bool:
    return "tools" not in service.get("profiles", [])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the compose project with generated NATS users, as `up` would see it."""
    shutil.copy(COMPOSE_FILE, tmp_path / COMPOSE_FILE.name)
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("generated"))
    write_deployment(
        tmp_path / "deploy" / "generated",
        reviewers=PLUGIN_REVIEWERS,
        options=ServerOptions(host="0.0.0.0"),
    )
    return tmp_path


def agent_services() -> dict[str, dict[str, Any]]:
    """The services running a built-in agent role, which asks the LLM."""
    agents = {("worker", role) for role in AGENT_ROLES}
    return {n: s for n, s in codeyard_services().items() if tuple(s["command"]) in agents}


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `45s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def compose_config(
    project: Path, *overlays: Path, env: dict[str, str] | None = None, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    files = [project / COMPOSE_FILE.name, *(project / "deploy" / o.name for o in overlays)]
    argv = [DOCKER_COMPOSE, *(arg for f in files for arg in ("-f", str(f))), "config"]
    argv += ["-q"] if quiet else []
    env = {**(os.environ if env is None else env), **REQUIRED_ENV}
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose not installed (Debian package docker-compose; scripts/install.sh)",
)
@pytest.mark.parametrize("overlays", [(), *((o,) for o in OVERLAYS)], ids=lambda o: str(o))
def test_docker_compose_accepts_the_files(project: Path, overlays: tuple[Path, ...]) -> None:
    checked = compose_config(project, *overlays)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed")
def test_docker_compose_refuses_to_start_without_the_dashboard_token(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CODEYARD_DASHBOARD_TOKEN"}
    env["GRAFANA_ADMIN_PASSWORD"] = "x"
    assert DOCKER_COMPOSE is not None
    checked = subprocess.run(
        [DOCKER_COMPOSE, "config", "-q"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode != 0
    assert "CODEYARD_DASHBOARD_TOKEN" in checked.stderr


def test_every_codeyard_service_runs_a_real_command() -> None:
    found = codeyard_services()
    assert {"coordinator-a", "coordinator-b", "safety-gate", "coder", "dashboard"} <= set(found)
    for name, service in found.items():
        assert codeyard_command(list(service["command"])) == "", name


def test_every_role_runs() -> None:
    commands = {tuple(s["command"]) for s in codeyard_services().values()}
    for role in ("planner", "coder", "tester", "review"):
        assert ("worker", role) in commands
    assert ("worker", "review", "--name", "static") in commands
    assert ("gate",) in commands
    assert sum(command[0] == "coordinator" for command in commands) == 2  # leader + standby


def test_coders_scale() -> None:
    coder = services()["coder"]
    assert "container_name" not in coder
    assert "ports" not in coder


def test_every_codeyard_service_has_its_own_existing_principal() -> None:
    for name, service in codeyard_services().items():
        env_file = Path(service["env_file"])
        assert env_file.parent == Path("deploy/generated/credentials"), name
        assert env_file.stem in known_principals(), name
        assert service["environment"]["NATS_URL"] == "nats://nats:4222", name


def test_every_codeyard_variable_is_a_setting() -> None:
    known = setting_env_names()
    for path in (COMPOSE_FILE, *OVERLAYS):
        for name, service in load_yaml(path)["services"].items():
            for variable in service.get("environment") or {}:
                if variable.startswith("CODEYARD_"):
                    assert variable in known, f"{path.name}: {name}: {variable}"


def test_the_cluster_overlay_replicates_the_streams() -> None:
    overlay = load_yaml(OVERLAYS[0])["services"]
    nodes = [name for name in overlay if name.startswith("nats")]
    assert len(nodes) == 3
    names = {node: overlay[node]["command"] for node in nodes}
    server_names = {cmd[cmd.index("--server_name") + 1] for cmd in names.values()}
    assert len(server_names) == 3
    for name, service in overlay.items():
        if name.startswith("coordinator"):
            assert service["environment"]["CODEYARD_REPLICAS"] == "3"
    assert {n for n in services() if n.startswith("coordinator")} <= set(overlay)


def test_prometheus_scrapes_every_codeyard_service() -> None:
    config = load_yaml(PROMETHEUS)
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for discovery in job.get("dns_sd_configs", []):
            assert discovery["port"] == 9464, job["job_name"]
            scraped |= set(discovery["names"])
    running = {n for n, s in codeyard_services().items() if long_running(n, s)}
    assert running <= scraped, running - scraped
    assert scraped <= set(services()), scraped - set(services())


def test_every_llm_setting_reaches_the_agents() -> None:
    """Only OPENAI_BASE_URL/_API_KEY and CODEYARD_LLM_MODEL were passed on: every other LLM
    setting (per-role models, prices, timeout, max tokens...) set in the shell was ignored."""
    agents = agent_services()
    assert set(agents) == {"planner", "coder", "tester", "review"}
    for name, service in agents.items():
        environment = service["environment"]
        assert llm_env_names() <= set(environment), (name, llm_env_names() - set(environment))
        for variable in llm_env_names():
            # no value: the shell's, or unset; `${VAR:-}` would make unset an empty value
            assert environment[variable] is None, (name, variable, environment[variable])


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed")
def test_llm_settings_pass_from_the_shell_as_they_are(project: Path) -> None:
    """Set ones arrive as set (an empty one empty: no temperature sent); unset ones stay unset,
    so codeyard's own defaults apply."""
    env = {k: v for k, v in os.environ.items() if k not in llm_env_names()}
    env |= {"CODEYARD_LLM_MAX_TOKENS": "512", "CODEYARD_LLM_TEMPERATURE": ""}
    checked = compose_config(project, env=env, quiet=False)
    assert checked.returncode == 0, checked.stderr
    resolved = yaml.safe_load(checked.stdout)["services"]
    for name in agent_services():
        environment = resolved[name]["environment"]
        assert environment["CODEYARD_LLM_MAX_TOKENS"] == "512", name
        assert environment["CODEYARD_LLM_TEMPERATURE"] == "", name
        assert environment["CODEYARD_LLM_MODEL_CODER"] is None, name  # not set in the container


def test_codeyard_services_outwait_the_workers_hand_back() -> None:
    """On SIGTERM a worker finishes its in-flight work for up to its grace, then hands the rest
    back; Docker's default stop_grace_period (10 s) killed it long before."""
    for path in (COMPOSE_FILE, *OVERLAYS):
        for name, service in load_yaml(path)["services"].items():
            if "stop_grace_period" in service:
                assert seconds(service["stop_grace_period"]) >= worker_grace() + 5, (path, name)
    for name, service in codeyard_services().items():
        assert seconds(service.get("stop_grace_period", "10s")) >= worker_grace() + 5, name
