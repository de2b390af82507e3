"""`codeyard up` with CODEYARD_METRICS_PORT: each child serves its metrics on its own port, from
that one on. The services every `up` runs keep their ports whatever else runs (`FIXED_SLOTS`:
a static Prometheus configuration stays right with another `--coders`, or without the
dashboard); the coders and plugin reviewers follow. Ports `up` uses otherwise (NATS's, the
dashboard's) are passed over: a metrics server there made the dashboard fail to listen, which
stopped every service, or was scraped in NATS's place."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Collection, Sequence

from codeyard.supervisor import ChildSpec

MAX_PORT = 65535
FIXED_SLOTS = ("coordinator", "safety-gate", "dashboard", "planner", "tester", "review")


def with_metrics_ports(
    children: Sequence[ChildSpec], first: int, taken: Collection[int] = ()
) -> list[ChildSpec]:
    """`children` with CODEYARD_METRICS_PORT set: the k-th of the ports from `first` on that are
    not `taken`, k being the child's slot (`FIXED_SLOTS`, then the others in their order);
    unchanged when `first` is 0 (metrics off). A child past port 65535 gets 0: no metrics
    rather than no child."""
    if first == 0:
        return list(children)
    needed = len(FIXED_SLOTS) + len(children)
    free = list(itertools.islice((p for p in itertools.count(first) if p not in taken), needed))
    others = iter(range(len(FIXED_SLOTS), len(FIXED_SLOTS) + len(children)))
    placed = []
    for child in children:
        slot = FIXED_SLOTS.index(child.name) if child.name in FIXED_SLOTS else next(others)
        port = free[slot]
        env = dict(os.environ if child.env is None else child.env)
        env["CODEYARD_METRICS_PORT"] = str(port if port <= MAX_PORT else 0)
        placed.append(dataclasses.replace(child, env=env))
    return placed


def metrics_port_of(child: ChildSpec) -> int:
    return int((child.env or {}).get("CODEYARD_METRICS_PORT", "0"))
