"""Where a report's data comes from: the run's record, asked of a real coordinator."""

from __future__ import annotations

import pytest

from codeyard.bus import Bus
from codeyard.coordinator.service import Coordinator
from codeyard.report.source import fetch_run
from codeyard.schemas import TaskSpec
from tests.coordinator.harness import running_coordinator, submit


async def test_no_run_id_is_refused_rather_than_read_as_another_run(bus: Bus) -> None:
    """A status query of no run id is one of every run: `fetch_run(bus, "")` (`codeyard report
    ""`) read the first run the coordinator knew, someone else's."""
    async with running_coordinator(Coordinator(bus, name="c", capacity=4)):
        await submit(bus, [TaskSpec(id="a", title="a")], run_id="someone-elses")
        with pytest.raises(ValueError, match="no run id"):
            await fetch_run(bus, "")
        assert (await fetch_run(bus, "someone-elses")).run_id == "someone-elses"
