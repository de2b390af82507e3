"""What the deployment files (docker-compose.yml, deploy/) must agree with in the code: the
CLI's commands, the settings' environment names, the bus principals, the metric names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import typer.main
import yaml
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from codeyard.bus.permissions import principals
from codeyard.bus.worker import STOP_GRACE
from codeyard.cli import app
from codeyard.config import Settings
from codeyard.llm import LLMSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OVERLAYS = (DEPLOY / "nats-cluster.yml", DEPLOY / "docker-sandbox.yml")
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codeyard.json"
CODEYARD_IMAGE = "codeyard"

# The plugin reviewers the deployment runs, so the principals it generates users for.
PLUGIN_REVIEWERS = ("static",)


# The metrics the dashboard uses (codeyard/observability/metrics.py defines them): sample
# name -> labels. tests/deploy/test_observability.py checks codeyard exports each of them.
METRICS = {
    "codeyard_work_items_handled_total": {"role"},
    "codeyard_work_items_failed_total": {"role"},
    "codeyard_handler_duration_seconds_bucket": {"role", "outcome", "le"},
    "codeyard_llm_calls_total": {"role", "model", "outcome"},
    "codeyard_llm_tokens_total": {"role", "model", "kind"},
    "codeyard_llm_call_duration_seconds_bucket": {"role", "model", "le"},
    "codeyard_sandbox_runs_total": {"backend", "outcome"},
    "codeyard_sandbox_run_duration_seconds_bucket": {"backend", "le"},
    "codeyard_gate_decisions_total": {"action", "decision"},
    "codeyard_coordinator_tasks": {"state"},
    "codeyard_consumer_pending_messages": {"stream", "consumer"},
    "codeyard_consumer_ack_pending_messages": {"stream", "consumer"},
    "codeyard_consumer_redelivered_messages": {"stream", "consumer"},
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def cli_commands() -> frozenset[str]:
    """The top-level `codeyard` commands and command groups."""
    group = typer.main.get_command(app)
    return frozenset(getattr(group, "commands", {}))


def known_principals() -> frozenset[str]:
    return frozenset(principals(PLUGIN_REVIEWERS))


def _env_names(settings: type[BaseSettings], *, secrets_only: bool = False) -> Iterator[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    for name, field in settings.model_fields.items():
        if secrets_only and SecretStr not in (field.annotation, *get_args(field.annotation)):
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            yield from (choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            yield alias
        else:
            yield f"{prefix}{name}"


def llm_env_names() -> frozenset[str]:
    """Every environment variable the agents' LLM settings read, upper case."""
    return frozenset(name.upper() for name in _env_names(LLMSettings))


def llm_secret_env_names() -> frozenset[str]:
    """The LLM settings that are secrets (the API key), upper case: for a Secret, never a
    ConfigMap, which anyone allowed to read the namespace's configuration can read."""
    return frozenset(name.upper() for name in _env_names(LLMSettings, secrets_only=True))


def worker_grace() -> float:
    """Seconds a worker given SIGTERM finishes its in-flight work before it hands the rest
    back (its default: what `codeyard worker` uses)."""
    return STOP_GRACE


def setting_env_names() -> frozenset[str]:
    """Every environment variable codeyard reads, upper case (pydantic-settings ignores case)."""
    names = {*_env_names(Settings), *_env_names(LLMSettings)}
    return frozenset(name.upper() for name in names)


def codeyard_command(argv: list[str]) -> str:
    """The problem with a codeyard command line, or "" when it names a real command."""
    if not argv:
        return "no command: the image would print its help and exit"
    known = cli_commands()
    if argv[0] not in known:
        return f"{argv[0]!r} is not a codeyard command ({sorted(known)})"
    return ""
