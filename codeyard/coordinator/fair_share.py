"""How many tasks each open run may have in flight when the coordinator caps them all together.

Without a cap each run has up to its capacity in flight, and work is served first come first
served: a run submitted while others keep the coders' queue full waits for the whole queue. With
a cap (`Coordinator(max_in_flight=...)`), the cap is shared out among the runs as water fills
vessels: a run that wants less than an equal share keeps what it wants, and what it leaves is
shared equally among the others. A run that starts while others already have their share in
flight gets its own at once; the others send no more until theirs drops below their new share
(work in flight is never taken back). Pure: the coordinator asks at each step.
"""

from __future__ import annotations

from collections.abc import Mapping


def fair_shares(wants: Mapping[str, int], total: int, per_run: int) -> dict[str, int]:
    """Each run's capacity: `wants` are the tasks each run could have in flight now (in flight
    and ready), `total` the cap across runs, `per_run` a run's own capacity. Every run gets at
    least 1, so that more runs than `total` still all move (the cap is then exceeded by as many
    as there are runs beyond it), and none more than `per_run`."""
    if total < 1 or per_run < 1:
        raise ValueError(f"the cap and a run's capacity must be >= 1, got {total} and {per_run}")
    shares: dict[str, int] = {}
    left = total
    # the least hungry first: what they leave goes to the others; ties in the caller's order
    hungry = sorted(wants, key=lambda run: min(max(wants[run], 1), per_run))
    for index, run in enumerate(hungry):
        equal = max(1, left // (len(hungry) - index))
        shares[run] = min(max(wants[run], 1), per_run, equal)
        left = max(0, left - shares[run])
    return shares
