"""What `codeyard run` tells while it follows a run, besides the run's own events."""

from __future__ import annotations

from codeyard.progress.follower import UnpricedCalls
from codeyard.schemas import Progress, Usage, UsageReported


def reported(cost_usd: float, calls: int = 1, model: str = "gpt-4o") -> UsageReported:
    usage = Usage(calls=calls, prompt_tokens=900, completion_tokens=100, cost_usd=cost_usd)
    return UsageReported(
        run_id="r1", task_id="a", attempt=1, role="coder", usage=usage, model=model
    )


def test_a_cost_limit_the_agents_prices_cannot_reach_is_told_once() -> None:
    unpriced = UnpricedCalls(max_cost_usd=5.0)
    assert unpriced.warning(reported(0.0)) == (
        "the coder's LLM calls (gpt-4o) are priced at $0 where it runs (set "
        "CODEYARD_LLM_PRICES, or CODEYARD_LLM_INPUT_PRICE_PER_MTOK and "
        "CODEYARD_LLM_OUTPUT_PRICE_PER_MTOK, there): --max-cost 5 does not limit them; "
        "--max-tokens does"
    )
    assert unpriced.warning(reported(0.0)) == ""  # once a run


def test_nothing_is_told_of_priced_calls_or_without_a_cost_limit() -> None:
    priced = UnpricedCalls(max_cost_usd=5.0)
    assert priced.warning(reported(0.02)) == ""
    assert priced.warning(reported(0.0, calls=0)) == ""  # (no call: nothing was priced)
    assert priced.warning(Progress(run_id="r1", role="coder", message="editing")) == ""
    assert priced.warning(reported(0.0)) != ""  # another role may have no prices

    assert UnpricedCalls(max_cost_usd=0.0).warning(reported(0.0)) == ""


def test_what_the_agents_wrote_reaches_the_terminal_escaped() -> None:
    warning = UnpricedCalls(max_cost_usd=1.5).warning(reported(0.0, model="m\x1b[2J"))
    assert "(m\\x1b[2J)" in warning
    assert "--max-cost 1.5 " in warning
