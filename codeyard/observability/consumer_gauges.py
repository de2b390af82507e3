"""Queue depth, unacked and redelivered messages per JetStream consumer, as gauges.

Read by the leading coordinator every few seconds (`ConsumerGauges.poll`): one `CONSUMER.LIST`
of `CY_WORK` (every role's consumer, plugin reviewers' included) and the coordinator's own
consumer on `CY_RESULTS`. A consumer that disappears drops its series.
"""

from __future__ import annotations

import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from codeyard.bus import subjects
from codeyard.observability.metrics import (
    CONSUMER_ACK_PENDING,
    CONSUMER_PENDING,
    CONSUMER_REDELIVERED,
)

log = logging.getLogger(__name__)

_GAUGES = (CONSUMER_PENDING, CONSUMER_ACK_PENDING, CONSUMER_REDELIVERED)


class ConsumerGauges:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._seen: set[tuple[str, str]] = set()

    async def poll(self) -> set[str] | None:
        """Read every consumer once and set the gauges; the names of `CY_WORK`'s consumers, or
        None when the read failed (the gauges keep their last values)."""
        try:
            infos = await self._js.consumers_info(subjects.WORK_STREAM)
            infos.append(
                await self._js.consumer_info(subjects.RESULT_STREAM, subjects.COORDINATOR_CONSUMER)
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("consumer gauges: cannot read consumer info: %s", exc)
            return None
        seen = {self._set(info) for info in infos}
        for gone in self._seen - seen:
            for gauge in _GAUGES:
                gauge.remove(*gone)
        self._seen = seen
        return {name for stream, name in seen if stream == subjects.WORK_STREAM}

    @staticmethod
    def _set(info: ConsumerInfo) -> tuple[str, str]:
        labels = (info.stream_name, info.name)
        CONSUMER_PENDING.labels(*labels).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(*labels).set(info.num_ack_pending or 0)
        CONSUMER_REDELIVERED.labels(*labels).set(info.num_redelivered or 0)
        return labels

    def clear(self) -> None:
        """No longer leading: another coordinator reports them."""
        for labels in self._seen:
            for gauge in _GAUGES:
                gauge.remove(*labels)
        self._seen = set()
