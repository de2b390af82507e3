"""`endpoint_unreachable`: whether the LLM endpoint answers at all, asked when `codeyard up`
starts. An endpoint that is not there made every run wait minutes (the agents' retries) before
failing with "the model is unavailable", while `codeyard run` showed nothing."""

from __future__ import annotations

import httpx2
import openai

from codeyard.llm.settings import LLMSettings


def endpoint_unreachable(settings: LLMSettings, timeout: float = 3.0) -> str | None:
    """Why the endpoint cannot be reached (refused, no such host, timed out, TLS refused), or
    None when it answers. Asked with the HTTP client the agents use, so through the proxy the
    environment names (HTTPS_PROXY, NO_PROXY...) and with its TLS settings, as their calls go.
    One GET of the base URL without the API key, its body left unread: any answer, even an
    error (a wrong key, say), is left to the agents to report."""
    try:
        client = openai.DefaultHttpxClient(timeout=timeout, follow_redirects=False)
        with client, client.stream("GET", settings.endpoint()):
            return None
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        return str(exc) or type(exc).__name__
