"""Reading this process's metrics: current values, and what changed during a test (the
registry is process-wide, so tests compare before and after)."""

from __future__ import annotations

from prometheus_client import REGISTRY


def value(name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """How much each named sample grew since this was created."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self._before = {self._key(name, labels): value(name, **labels) for name, labels in samples}

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    def __call__(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self._before[self._key(name, labels)]
