"""Asking the model from a worker: LLM failures become the worker's retry or give-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from codeyard.bus.worker import GiveUp, RetryLater
from codeyard.llm import ChatMessage, Completion, InvalidOutput, LLMClient, LLMRejected
from codeyard.llm.errors import LLMUnavailable
from codeyard.llm.tool_call import quoted, shortened
from codeyard.schemas import Usage
from codeyard.schemas.model import SHORT_TEXT_CHARS, clip

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)

# Between asks of a model that stays unavailable: from the first pause, doubling, to the last.
FIRST_OUTAGE_PAUSE = 15.0
LAST_OUTAGE_PAUSE = 120.0


async def ask_model(
    llm: LLMClient,
    role: str,
    messages: Sequence[ChatMessage],
    output: type[M],
    *,
    tool_name: str,
    tool_description: str,
    spent: Usage | None = None,
    model: str = "",
) -> Completion[M]:
    """The model's answer; if it cannot give one now, `RetryLater`, and never, `GiveUp`; both
    with what the work spent: `spent` (earlier calls of the same work) and this call's, which
    the worker reports either way (tokens paid for before the endpoint failed still count),
    and the model that answered: this call's last answer's, else `model` (the one that answered
    the earlier calls), "" when none did (the worker bounds it, as every model handed back).

    A model unavailable (`LLMUnavailable`: its client's own retries did not outlast the trouble)
    is asked again, at growing pauses, for up to `llm.outage_patience` seconds: handed back at
    once, the work used one of its few deliveries per half minute of outage, and its run failed
    after about two and a half minutes of 503s or 429s. The worker keeps the work meanwhile (its
    heartbeats go on)."""
    failed = Usage()  # what calls that failed were paid for
    deadline = time.monotonic() + llm.outage_patience
    pause = FIRST_OUTAGE_PAUSE
    while True:
        try:
            completion = await llm.structured(
                role, messages, output, tool_name=tool_name, tool_description=tool_description
            )
        except LLMUnavailable as exc:
            failed = failed + exc.usage
            model = exc.model or model
            if (left := deadline - time.monotonic()) <= 0:
                raise RetryLater(
                    f"the model is unavailable: {exc}",
                    delay=30.0,
                    usage=(spent or Usage()) + failed,
                    model=model,
                ) from exc
            log.warning(
                "%s: the model is unavailable (%s); asking again in %.0f s", role, exc, pause
            )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, LAST_OUTAGE_PAUSE)
            continue
        except (InvalidOutput, LLMRejected) as exc:
            usage = (spent or Usage()) + failed + exc.usage
            raise GiveUp(
                f"the model could not answer: {exc}", usage=usage, model=exc.model or model
            ) from exc
        if failed == Usage():
            return completion
        return dataclasses.replace(completion, usage=completion.usage + failed)


def answered_by(completion: Completion[Any]) -> str:
    """The model that gave `completion`, for the result to name. Cut to what a result may
    carry: the name is the endpoint's to choose, and one too long would make the whole result
    undecodable for the coordinator."""
    return clip(completion.model, SHORT_TEXT_CHARS)


def told_again(
    messages: Sequence[ChatMessage], answer: BaseModel, problem: str
) -> list[ChatMessage]:
    """The conversation with the model's answer and why it cannot be used, to ask again.

    Both are bounded as the LLM client bounds its own re-asks (`quoted`, `shortened`): the
    answer's start and end, and the model told it was cut. Whole, a coder's write of a file
    over the size limit went back in full (over a megabyte of prompt, paid for), then again
    with the next answer's."""
    shown, note = quoted(answer.model_dump_json())
    return [
        *messages,
        {"role": "assistant", "content": shown},
        {"role": "user", "content": f"{note}{shortened(problem)}\nAnswer again, correcting this."},
    ]
