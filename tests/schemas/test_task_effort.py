"""TaskSpec.effort: optional on the wire, so plans written before it existed still decode."""

from __future__ import annotations

import msgspec
import pytest

from codeyard.schemas import MessageError, PlanResult, decode, encode
from codeyard.schemas.model import TaskSpec


def test_a_plan_without_estimates_decodes_and_stays_without() -> None:
    old = msgspec.json.encode({"id": "a", "title": "task a", "deps": []})
    spec = msgspec.json.decode(old, type=TaskSpec)
    assert spec.effort is None
    assert b"effort" not in msgspec.json.encode(spec)  # omitted, as every other default


def test_an_estimate_survives_the_wire() -> None:
    result = PlanResult(run_id="r1", tasks=[TaskSpec(id="a", title="task a", effort=0.5)])
    assert decode(encode(result), PlanResult).tasks[0].effort == 0.5


@pytest.mark.parametrize("effort", [0, -1, 10_001, 1e300])
def test_an_estimate_must_be_positive_and_bounded(effort: float) -> None:
    raw = msgspec.json.encode({"id": "a", "title": "task a", "effort": effort})
    with pytest.raises(msgspec.ValidationError, match="effort"):
        msgspec.json.decode(raw, type=TaskSpec)
    result = PlanResult(run_id="r1", tasks=[TaskSpec(id="a", title="task a", effort=effort)])
    with pytest.raises(MessageError, match="effort"):
        decode(encode(result), PlanResult)
