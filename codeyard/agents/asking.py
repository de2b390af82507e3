"""Asking the model from a worker: LLM failures become the worker's retry or give-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel

from codeyard.bus.worker import GiveUp, RetryLater
from codeyard.llm import ChatMessage, Completion, InvalidOutput, LLMClient, LLMRejected
from codeyard.llm.errors import LLMUnavailable

M = TypeVar("M", bound=BaseModel)


async def ask_model(
    llm: LLMClient,
    role: str,
    messages: Sequence[ChatMessage],
    output: type[M],
    *,
    tool_name: str,
    tool_description: str,
) -> Completion[M]:
    try:
        return await llm.structured(
            role, messages, output, tool_name=tool_name, tool_description=tool_description
        )
    except LLMUnavailable as exc:
        raise RetryLater(f"the model is unavailable: {exc}", delay=30.0) from exc
    except (InvalidOutput, LLMRejected) as exc:
        raise GiveUp(f"the model could not answer: {exc}") from exc


def told_again(
    messages: Sequence[ChatMessage], answer: BaseModel, problem: str
) -> list[ChatMessage]:
    """The conversation with the model's answer and why it cannot be used, to ask again."""
    return [
        *messages,
        {"role": "assistant", "content": answer.model_dump_json()},
        {"role": "user", "content": f"{problem}\nAnswer again, correcting this."},
    ]
