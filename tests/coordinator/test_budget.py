"""budget_overrun: when a run has spent more than it may; lift_exceeded: what approving it lifts."""

from __future__ import annotations

from codeyard.coordinator import budget_overrun
from codeyard.coordinator.budget import lift_exceeded
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


def test_approving_an_overrun_lifts_only_the_exceeded_limits() -> None:
    budget = Budget(max_tokens=100, max_cost_usd=1.0, max_attempts_per_task=5)
    tokens_over = lift_exceeded(Usage(prompt_tokens=101, cost_usd=0.5), budget)
    assert tokens_over == Budget(max_tokens=0, max_cost_usd=1.0, max_attempts_per_task=5)
    cost_over = lift_exceeded(Usage(prompt_tokens=50, cost_usd=1.5), budget)
    assert cost_over == Budget(max_tokens=100, max_cost_usd=0.0, max_attempts_per_task=5)
    both_over = lift_exceeded(Usage(prompt_tokens=101, cost_usd=1.5), budget)
    assert both_over == Budget(max_tokens=0, max_cost_usd=0.0, max_attempts_per_task=5)
    assert lift_exceeded(Usage(prompt_tokens=100, cost_usd=1.0), budget) == budget
