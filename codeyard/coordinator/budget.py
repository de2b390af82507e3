"""Whether a run's usage has gone over its budget."""

from __future__ import annotations

from msgspec.structs import replace

from codeyard.schemas.model import Budget, Usage


def budget_overrun(usage: Usage, budget: Budget) -> str:
    """Why `usage` exceeds `budget`, or "" when it does not. A limit of 0 is no limit."""
    reasons: list[str] = []
    if _over_tokens(usage, budget):
        reasons.append(f"{usage.total_tokens} tokens used, budget {budget.max_tokens}")
    if _over_cost(usage, budget):
        reasons.append(f"${usage.cost_usd:.4f} spent, budget ${budget.max_cost_usd:.4f}")
    return "; ".join(reasons)


def lift_exceeded(usage: Usage, budget: Budget) -> Budget:
    """`budget` with the limits `usage` exceeds lifted (set to 0, no limit) and the others kept:
    approving an overrun of tokens must not also give the run an unlimited purse."""
    return replace(
        budget,
        max_tokens=0 if _over_tokens(usage, budget) else budget.max_tokens,
        max_cost_usd=0.0 if _over_cost(usage, budget) else budget.max_cost_usd,
    )


def _over_tokens(usage: Usage, budget: Budget) -> bool:
    return bool(budget.max_tokens) and usage.total_tokens > budget.max_tokens


def _over_cost(usage: Usage, budget: Budget) -> bool:
    return bool(budget.max_cost_usd) and usage.cost_usd > budget.max_cost_usd
