"""A coordinator dying between two writes of one step, for tests of what the next leader loads."""

from __future__ import annotations

from codeyard.bus import Bus
from codeyard.bus.pipeline import Pending, PublishPipeline
from codeyard.bus.subjects import RUNS_BUCKET
from codeyard.coordinator.run_store import header_key


class DiesBeforeTheHeader(PublishPipeline):
    """Publishes like the coordinator's pipeline, until the write of `run_id`'s header: there
    its coordinator dies (the step's earlier writes are stored, nothing after them is)."""

    def __init__(self, bus: Bus, run_id: str) -> None:
        super().__init__(bus.nc)
        self.header = f"$KV.{RUNS_BUCKET}.{header_key(run_id)}"

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Pending:
        if subject == self.header:
            raise ConnectionError("the coordinator died here")
        return await super().publish(subject, payload, headers)
