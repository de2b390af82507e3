"""How long to wait before retrying a failed LLM request."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": retry `n` waits between half and all of
    `first * 2**(n-1)` (capped at `cap`). The fixed half keeps a retry from hitting a struggling
    server at once; the random half spreads the many workers that failed together."""

    first: float
    cap: float

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (1 for the first). A server's `Retry-After`
        is honoured up to the cap."""
        ceiling = min(self.cap, self.first * 2.0 ** (retry - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay
