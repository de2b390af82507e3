"""The whole system for end-to-end tests: a scripted OpenAI-compatible server and `codeyard up`
with two coders, as real processes, and the sample repository (tests/fixtures/calc)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from codeyard.bus.embedded import free_port
from codeyard.sandbox import SandboxUnavailable, default_sandbox
from tests.processes import start, stop

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "calc"


def sandbox_missing() -> str:
    try:
        default_sandbox()
    except SandboxUnavailable as exc:
        return str(exc)
    return ""


@asynccontextmanager
async def codeyard_stack(tmp_path: Path, script: Path) -> AsyncIterator[dict[str, str]]:
    """Yields the environment for `codeyard run` against the running system."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    llm, ready = await start(
        "-m",
        "codeyard.testing.openai_server",
        "--script",
        str(script),
        "--record",
        str(tmp_path / "llm-requests.jsonl"),
        env=base,
        ready=b"READY",
    )
    env = base | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "CODEYARD_NATS_PORT": str(free_port()),
        "CODEYARD_DASHBOARD_PORT": str(free_port()),  # not 8700, a user's `up` may hold it
        "OPENAI_BASE_URL": ready.removeprefix("READY "),
        "OPENAI_API_KEY": "test-key",
        "CODEYARD_LLM_MAX_RETRIES": "1",
    }
    try:
        up, _ = await start("-m", "codeyard", "up", "--coders", "2", env=env, ready=b"Ctrl-C stops")
    except BaseException:
        await stop(llm)
        raise
    try:
        yield env
    finally:
        await stop(up, 60)
        await stop(llm)
