"""`endpoint_unreachable`: whether anything listens at the LLM endpoint, asked when `codeyard up`
starts. An endpoint that is not there made every run wait minutes (the agents' retries) before
failing with "the model is unavailable", while `codeyard run` showed nothing."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from codeyard.llm.settings import LLMSettings

DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_unreachable(settings: LLMSettings, timeout: float = 3.0) -> str | None:
    """Why no TCP connection to the endpoint's host and port can be made (refused, no such
    host, timed out), or None when one can. Nothing is sent: an endpoint that answers, even
    with an error (a wrong key, say), is left to the agents to report."""
    url = urlsplit(settings.endpoint())
    host = url.hostname or ""
    try:
        port = url.port or DEFAULT_PORTS.get(url.scheme, 443)
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:  # (ValueError: a port out of range)
        return str(exc) or type(exc).__name__
