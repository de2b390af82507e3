"""Whether anything listens at the LLM endpoint, as `codeyard up` asks when it starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from codeyard.bus.embedded import free_port
from codeyard.llm import LLMSettings
from codeyard.llm.reachability import endpoint_unreachable


class Unauthorized(BaseHTTPRequestHandler):
    """An endpoint that answers, if only to say the key is wrong; the paths it was asked."""

    asked: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        Unauthorized.asked.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_endpoint() -> Iterator[int]:
    with ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized) as server:
        serving = threading.Thread(target=server.serve_forever)
        serving.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            serving.join()


def test_an_endpoint_that_answers_is_reachable_and_one_without_a_listener_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with http_endpoint() as port:
        settings = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-secret")
        assert endpoint_unreachable(settings) is None  # (a 401 is an answer)
    assert Unauthorized.asked[-1] == ("/v1", "")  # the key is not sent
    closed = endpoint_unreachable(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1"))
    assert closed is not None
    assert "refused" in closed


def test_the_endpoint_is_asked_through_the_proxy_the_agents_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a proxy, a direct connection may be refused while the agents' calls get through
    (and the other way round): the check goes the agents' way."""
    with socket.create_server(("127.0.0.1", 0)) as nothing_served:
        no_proxy = nothing_served.getsockname()[1]
    with http_endpoint() as port:
        settings = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{no_proxy}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        through_proxy = endpoint_unreachable(settings)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        bypassing_it = endpoint_unreachable(settings)
    assert through_proxy is not None
    assert "refused" in through_proxy
    assert bypassing_it is None


async def test_up_warns_of_an_llm_endpoint_that_does_not_answer(tmp_path: Path) -> None:
    """The run waited minutes (the agents' retries) and `codeyard run` showed nothing."""
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env |= {
        "CODEYARD_DATA_DIR": str(tmp_path),
        "CODEYARD_NATS_PORT": str(free_port()),
        "CODEYARD_LOCAL_LLM": "0",
        "OPENAI_BASE_URL": endpoint,
    }
    env.pop("NATS_URL", None)
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codeyard", "up", "--no-dashboard"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert up.stderr is not None
        line = await asyncio.wait_for(up.stderr.readline(), 30)
    finally:
        up.send_signal(signal.SIGTERM)
        await asyncio.wait_for(up.communicate(), 60)
    assert line.decode().startswith(f"warning: the LLM endpoint {endpoint} does not answer (")
