"""What agents depend on to get structured output from an LLM: one protocol and its types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypedDict, TypeVar

from pydantic import BaseModel

from codeyard.schemas import Usage

M = TypeVar("M", bound=BaseModel)


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Completion(Generic[M]):
    """A validated answer.

    `usage` sums every response that came back while getting it (re-asks included; requests
    that failed and were retried returned nothing to count). `model` is the model that answered,
    as the endpoint named it. `attempts` is how many answers were asked for: 1 when the first
    one was valid, 1 + the number of re-asks otherwise.
    """

    value: M
    usage: Usage
    model: str
    attempts: int


class LLMClient(Protocol):
    # Seconds a worker waits out an endpoint that stays unavailable before handing its work back
    # (`codeyard.agents.asking`): an outage of a few minutes must not use up the work's
    # deliveries and fail its run.
    outage_patience: float

    async def structured(
        self,
        role: str,
        messages: Sequence[ChatMessage],
        output: type[M],
        *,
        tool_name: str,
        tool_description: str,
    ) -> Completion[M]:
        """Ask the model of `role` to answer `messages` with an instance of `output`.

        Raises `InvalidOutput` when no valid answer came within the re-asks, `LLMUnavailable`
        when the endpoint kept failing, `LLMRejected` when it refused the request.
        """
        ...
