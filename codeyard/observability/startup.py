"""What every service process (coordinator, gate, workers, dashboard) sets up before serving: its
name in the logs and, when a port is configured, its `/metrics` endpoint. (The log format itself
is set where logging is configured, before any service starts.)"""

from __future__ import annotations

from codeyard.config import Settings
from codeyard.observability.exporter import serve_metrics
from codeyard.observability.log_format import set_process_name


def start_observability(settings: Settings, process: str) -> None:
    set_process_name(process)
    serve_metrics(settings.metrics_host, settings.metrics_port)
