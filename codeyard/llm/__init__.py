"""The one place that talks to an LLM: structured output over any OpenAI-compatible endpoint,
with re-asks, retries and token/cost accounting."""

from codeyard.llm.client import ChatMessage, Completion, LLMClient
from codeyard.llm.errors import (
    InvalidOutput,
    LLMError,
    LLMNotConfigured,
    LLMRejected,
    LLMUnavailable,
)
from codeyard.llm.openai_client import OpenAIClient
from codeyard.llm.settings import NOT_CONFIGURED, LLMSettings, RoleModel

__all__ = [
    "NOT_CONFIGURED",
    "ChatMessage",
    "Completion",
    "InvalidOutput",
    "LLMClient",
    "LLMError",
    "LLMNotConfigured",
    "LLMRejected",
    "LLMSettings",
    "LLMUnavailable",
    "OpenAIClient",
    "RoleModel",
]
