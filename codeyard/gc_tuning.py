"""Python's cyclic garbage collector, set for long-lived services that pass many messages.

Each message allocates a few dozen short-lived objects (parsed frames, futures, structs), so
with the default thresholds (700, 10, 10) the collector ran about every 20 messages and, every
hundredth time, walked every object the process holds (all open runs' tasks). In
`bench/coordinator_throughput.py` that was 6-7 % of the coordinator's and the workers' CPU; at
20,000 it is under 2 %, for a few MB more of young objects between collections. Full
collections still happen (the later thresholds are unchanged), so cyclic garbage is freed.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune_gc_for_service() -> None:
    """Call once the service's modules are imported: what exists then (modules, classes,
    configuration) lives as long as the process, so collections stop walking it."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
