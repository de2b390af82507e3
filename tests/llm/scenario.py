"""What the LLM tests ask for: a small plan schema, one question, settings aimed at a scripted
server with retries fast enough for tests, and one call through a real `OpenAIClient`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from codeyard.llm import ChatMessage, Completion, LLMClient, LLMSettings, OpenAIClient
from codeyard.testing.openai_server import ScriptedOpenAI

TOOL = "submit_plan"
DESCRIPTION = "Submit the plan"
ASK: list[ChatMessage] = [
    {"role": "system", "content": "You plan work."},
    {"role": "user", "content": "Add JWT auth"},
]


class Plan(BaseModel):
    title: str
    steps: list[str] = Field(min_length=1)


VALID = {"title": "auth", "steps": ["add middleware", "add tests"]}


def settings(base_url: str, **overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": "test-key",
        "model": "base-model",
        "backoff_seconds": 0.001,
        "backoff_max_seconds": 0.01,
        "timeout_seconds": 5.0,
        "outage_patience_seconds": 0.0,  # unavailable: handed back at once
    }
    return LLMSettings(**(values | overrides))


async def ask(
    server: ScriptedOpenAI,
    role: str = "planner",
    *,
    messages: Sequence[ChatMessage] = ASK,
    **overrides: Any,
) -> Completion[Plan]:
    """One structured call from a fresh `OpenAIClient` to `server`."""
    async with OpenAIClient(settings(server.base_url, **overrides)) as client:
        asker: LLMClient = client  # what agents hold; mypy checks OpenAIClient conforms
        return await asker.structured(
            role, messages, Plan, tool_name=TOOL, tool_description=DESCRIPTION
        )
