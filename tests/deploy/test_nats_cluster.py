"""The cluster overlay's nats-server flags, with the generated configuration, form a 3-node
JetStream cluster: run here as three local servers on loopback ports instead of containers."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from codeyard.bus.embedded import find_nats_server
from codeyard.deploy.nats_config import ServerOptions, write_deployment
from tests.deploy.deployment_files import OVERLAYS, load_yaml

NODES = ("nats", "nats-2", "nats-3")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def replace_value(argv: list[str], flag: str, value: str) -> None:
    argv[argv.index(flag) + 1] = value


def meta_cluster(monitor_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/jsz", timeout=2) as answer:
        found: dict[str, Any] = json.load(answer).get("meta_cluster", {})
        return found


def test_the_overlay_flags_form_a_jetstream_cluster(tmp_path: Path) -> None:
    overlay = load_yaml(OVERLAYS[0])["services"]
    routes = {node: free_port() for node in NODES}
    monitors = {node: free_port() for node in NODES}
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for node in NODES:
            home = tmp_path / node
            options = ServerOptions(host="127.0.0.1", port=free_port(), store_dir=home / "data")
            deployment = write_deployment(home, options=options)
            argv = list(overlay[node]["command"])
            # the same flags with loopback ports in place of the containers' names
            replace_value(argv, "--config", str(deployment.config_file))
            replace_value(argv, "--http_port", str(monitors[node]))
            replace_value(argv, "--cluster", f"nats://127.0.0.1:{routes[node]}")
            replace_value(
                argv, "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes.values())
            )
            log = (home / "server.log").open("wb")
            servers.append(
                subprocess.Popen([str(find_nats_server()), *argv], stdout=log, stderr=log)
            )
        deadline = time.monotonic() + 60
        leaders: set[str | None] = set()
        while time.monotonic() < deadline:
            try:
                clusters = [meta_cluster(monitors[node]) for node in NODES]
            except OSError:
                clusters = []
            leaders = {cluster.get("leader") for cluster in clusters}
            formed = bool(clusters) and all(c.get("cluster_size") == 3 for c in clusters)
            if formed and len(leaders) == 1 and None not in leaders:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no 3-node JetStream cluster within 60s: {leaders}")
        assert leaders <= {"nats-1", "nats-2", "nats-3"}  # the overlay's server names
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
