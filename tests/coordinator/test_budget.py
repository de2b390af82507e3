"""budget_overrun: when a run has spent more than it may."""

from __future__ import annotations

from codeyard.coordinator import budget_overrun
from codeyard.schemas.model import Budget, Usage


def test_zero_limits_mean_unlimited() -> None:
    assert budget_overrun(Usage(prompt_tokens=10**9, cost_usd=1e6), Budget()) == ""


def test_reaching_a_limit_is_fine_and_passing_it_is_not() -> None:
    budget = Budget(max_tokens=100, max_cost_usd=1.0)
    assert budget_overrun(Usage(prompt_tokens=60, completion_tokens=40, cost_usd=1.0), budget) == ""
    assert budget_overrun(Usage(prompt_tokens=101), budget) == "101 tokens used, budget 100"
    assert budget_overrun(Usage(prompt_tokens=101, cost_usd=1.5), budget) == (
        "101 tokens used, budget 100; $1.5000 spent, budget $1.0000"
    )
