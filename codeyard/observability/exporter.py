"""Serving `/metrics` over HTTP from a service process (prometheus-client's own server, in a
daemon thread)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> bool:
    """Serve the default registry at http://host:port/metrics; `port` 0 serves nothing. A port
    that cannot be bound is logged and the service carries on without metrics: losing them
    must never take the service down."""
    if port == 0:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning(
            "metrics: cannot serve on %s:%d (%s); continuing without metrics", host, port, exc
        )
        return False
    log.info("metrics: serving http://%s:%d/metrics", host, port)
    return True
