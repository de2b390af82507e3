"""`codeyard up` with CODEYARD_METRICS_PORT: each child serves its metrics on its own port,
consecutive from that one, in the order `up` lists its children."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from codeyard.supervisor import ChildSpec

MAX_PORT = 65535


def with_metrics_ports(children: Sequence[ChildSpec], first: int) -> list[ChildSpec]:
    """`children` with CODEYARD_METRICS_PORT set to first, first + 1, ...; unchanged when
    `first` is 0 (metrics off). A child past port 65535 gets 0: no metrics rather than no
    child."""
    if first == 0:
        return list(children)
    return [
        dataclasses.replace(
            child,
            env=dict(os.environ if child.env is None else child.env)
            | {"CODEYARD_METRICS_PORT": str(port if port <= MAX_PORT else 0)},
        )
        for port, child in enumerate(children, start=first)
    ]


def metrics_port_of(child: ChildSpec) -> int:
    return int((child.env or {}).get("CODEYARD_METRICS_PORT", "0"))
