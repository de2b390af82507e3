"""`CODEYARD_REPLICAS` reaches the topology the coordinator creates (the cluster overlay sets 3)."""

from __future__ import annotations

import pytest

from codeyard.bus.topology import _streams
from codeyard.config import Settings


def test_replicas_default_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CODEYARD_REPLICAS", raising=False)
    assert Settings().topology().replicas == 1


def test_replicas_setting_reaches_every_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEYARD_REPLICAS", "3")
    topology = Settings().topology()
    assert topology.replicas == 3
    assert {stream.num_replicas for stream in _streams(topology)} == {3}


@pytest.mark.parametrize("bad", ["0", "6"])
def test_replicas_out_of_range_are_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("CODEYARD_REPLICAS", bad)
    with pytest.raises(ValueError, match="replicas"):
        Settings()
