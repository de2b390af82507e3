"""What every service process (coordinator, gate, workers) sets up before serving: its log
format and, when a port is configured, its `/metrics` endpoint."""

from __future__ import annotations

from codeyard.config import Settings
from codeyard.observability.exporter import serve_metrics
from codeyard.observability.log_format import configure_logging


def start_observability(settings: Settings) -> None:
    configure_logging(settings.log_format)
    serve_metrics(settings.metrics_host, settings.metrics_port)
