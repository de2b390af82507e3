"""deploy/k8s: every manifest valid against the Kubernetes JSON schemas (offline, bundled by
kubernetes-validate), the KEDA ScaledObject against tests/deploy/schemas, and consistent with
the code (commands, settings, principals, stream and consumer names)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from codeyard.bus import subjects
from codeyard.bus.permissions import SERVICE_ACCOUNT
from codeyard.llm import LLMSettings
from tests.deploy.deployment_files import (
    K8S,
    codeyard_command,
    known_principals,
    llm_env_names,
    llm_secret_env_names,
    load_yaml,
    load_yaml_documents,
    setting_env_names,
)

KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject.json"
SECRET_PREFIX = "codeyard-nats-"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# A setting left commented out for the operator to set: `  # NAME: value`, at a line's start.
PLACEHOLDER = re.compile(r"^(\s*)# ([A-Z][A-Z0-9_]*: .*)$", re.MULTILINE)


def resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_yaml_documents(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in resources() if doc["kind"] == kind]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return found


def codeyard_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (deployment["metadata"]["name"], container)
        for deployment in of_kind("Deployment")
        for container in containers(deployment)
        if container["image"].split(":")[0] == "codeyard"
    ]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    keda = json.loads(KEDA_SCHEMA.read_text())
    for resource in load_yaml_documents(path):
        if resource["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(resource, keda)  # a CRD: not in the bundled schemas
        else:
            kubernetes_validate.validate(resource, version, strict=True)


def test_the_strict_check_catches_a_misspelt_field() -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "date": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secrets.example.yaml"}


def test_every_codeyard_container_runs_a_real_command_with_its_own_principal() -> None:
    found = codeyard_containers()
    assert {name for name, _ in found} >= {
        "coordinator",
        "safety-gate",
        "planner",
        "coder",
        "tester",
        "review",
        "dashboard",
    }
    for name, container in found:
        assert codeyard_command(list(container["args"])) == "", name
        secrets = [
            source["secretRef"]["name"]
            for source in container["envFrom"]
            if "secretRef" in source and source["secretRef"]["name"].startswith(SECRET_PREFIX)
        ]
        assert len(secrets) == 1, name
        assert secrets[0].removeprefix(SECRET_PREFIX) in known_principals(), name


def test_every_codeyard_container_is_restarted_when_its_event_loop_is_stuck() -> None:
    for name, container in codeyard_containers():
        probe = container["livenessProbe"]
        assert probe["exec"]["command"] == ["python", "-m", "codeyard.liveness"], name
        # a few missed checks, not one slow one: the check itself starts a Python
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 60, name


def test_the_deployments_keda_scales_leave_the_count_to_it() -> None:
    """A count in the Deployment set the coders back to it at each `kubectl apply`."""
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in of_kind("ScaledObject")}
    assert scaled
    for deployment in of_kind("Deployment"):
        if deployment["metadata"]["name"] in scaled:
            assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_coordinators_run_leader_and_standby() -> None:
    (coordinator,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "coordinator"]
    assert coordinator["spec"]["replicas"] == 2


def test_every_codeyard_variable_is_a_setting() -> None:
    known = setting_env_names()
    variables = [key for cm in of_kind("ConfigMap") for key in cm["data"]]
    variables += [env["name"] for _, c in codeyard_containers() for env in c.get("env", [])]
    for secret in of_kind("Secret"):
        variables += list(secret.get("stringData", {}))
    for variable in variables:
        if variable.startswith("CODEYARD_"):
            assert variable in known, variable


def with_placeholders(path: Path) -> list[dict[str, Any]]:
    """The manifest as if every commented-out setting in it were set."""
    text = PLACEHOLDER.sub(r"\1\2", path.read_text())
    return [doc for doc in yaml.safe_load_all(text) if doc]


def llm_configmap() -> dict[str, str]:
    (configmap,) = [
        d for d in with_placeholders(K8S / "configmap.yaml") if d["kind"] == "ConfigMap"
    ]
    data: dict[str, str] = configmap["data"]
    return data


def test_every_llm_setting_is_named_in_the_configmap_and_its_key_in_the_secret() -> None:
    """The configmap named only the model and the base URL, while compose passed every LLM
    setting on: in Kubernetes the others were found only in the README."""
    keys = llm_secret_env_names()
    named = set(llm_configmap())
    (secret,) = [
        d
        for d in with_placeholders(K8S / "secrets.example.yaml")
        if d["metadata"]["name"] == "codeyard-llm"
    ]
    assert keys, "the API key is a SecretStr setting"
    assert llm_env_names() - keys <= named, sorted(llm_env_names() - keys - named)
    assert not keys & named, "an API key in a ConfigMap"
    assert keys <= set(secret["stringData"]), sorted(keys - set(secret["stringData"]))
    llm_like = {n for n in named if n.startswith(("CODEYARD_LLM_", "OPENAI_"))}
    assert llm_like <= llm_env_names(), sorted(llm_like - llm_env_names())


def test_the_configmaps_llm_settings_uncommented_are_valid_and_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uncommenting one must give a ConfigMap Kubernetes takes (values are strings) and a value
    codeyard reads under that name, rather than a refusal at start (exit 2)."""
    data = llm_configmap()
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": data}
    kubernetes_validate.validate(configmap, kubernetes_validate.latest_version(), strict=True)
    for name in list(os.environ):
        if name.upper() in llm_env_names():
            monkeypatch.delenv(name)
    for name, value in data.items():
        if name in llm_env_names():
            monkeypatch.setenv(name, value)

    settings = LLMSettings()
    unset = set(LLMSettings.model_fields) - settings.model_fields_set
    assert unset == {"api_key"}  # in the Secret


def test_keda_scales_the_coders_on_their_consumer() -> None:
    (scaled,) = of_kind("ScaledObject")
    deployments = {d["metadata"]["name"] for d in of_kind("Deployment")}
    assert scaled["spec"]["scaleTargetRef"]["name"] == "coder" in deployments
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert metadata["stream"] == subjects.WORK_STREAM
    assert metadata["consumer"] == subjects.consumer_name("coder")
    assert metadata["account"] == SERVICE_ACCOUNT
    host, port = metadata["natsServerMonitoringEndpoint"].split(":")
    (nats,) = [s for s in of_kind("Service") if s["metadata"]["name"] == host.split(".")[0]]
    assert int(port) in {p["port"] for p in nats["spec"]["ports"]}
    (statefulset,) = of_kind("StatefulSet")
    assert "--http_port" in containers(statefulset)[0]["args"]  # the monitoring endpoint is on


def test_every_container_running_the_bwrap_sandbox_has_a_memory_limit() -> None:
    """uid 10001 cannot make a memory cgroup per sandboxed run, so bwrap starts only where the
    container's own cgroup has a limit below the node's RAM: the coordinators (the suite after
    each merge), the tester and the static reviewer never started without one."""
    sandboxed = {
        name
        for name, container in codeyard_containers()
        if container["args"][0] == "coordinator"
        or container["args"][:2] == ["worker", "tester"]
        or "--name" in container["args"]
    }
    assert sandboxed == {"coordinator", "tester", "review-static"}
    for name, container in codeyard_containers():
        if name in sandboxed:
            assert container["resources"]["limits"]["memory"] == "4Gi", name
