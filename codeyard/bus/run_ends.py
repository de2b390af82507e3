"""Whether a work item's run has ended, from the run's header in `cy_runs`.

The coordinator withdraws the work of a run it cancels or fails with notices on
`cy.cancel.<run_id>`, which are not stored: a worker that was not listening then (started later,
scaled up, restarted) never hears them, and one that did forgets them after a while
(`Withdrawals`). The run's header tells any worker at any time: the coordinator writes it with
the run's final state before it sends the notices (`codeyard.coordinator.run_store`), and an
ended run never reopens, so a worker asks once per run and remembers the answer.

Only a definite answer drops work. A run with no header yet (its work may go out before its
header is stored), a header that cannot be read and a read that fails (timed out, refused,
NATS away) all mean "run it", as before this check existed.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import msgspec

from codeyard.bus import subjects
from codeyard.bus.connection import Bus
from codeyard.bus.permissions import through
from codeyard.bus.pipeline import ApiError
from codeyard.schemas.model import TERMINAL_RUN_STATES

log = logging.getLogger(__name__)

# A plain stream message get (the bucket is not created with direct gets): the last record of
# the header's key. Workers are granted this subject and no other access to `cy_runs`.
HEADER_GET = f"$JS.API.STREAM.MSG.GET.KV_{subjects.RUNS_BUCKET}"
READ_TIMEOUT = 2.0
# After a failed read, runs are not asked about for this long: a server that refuses the read
# (a configuration rendered before workers were granted it) or does not answer would otherwise
# hold every item for the whole timeout before it runs anyway.
PAUSE_AFTER_FAILURE = 30.0
NO_MESSAGE_FOUND = 10037  # JetStream's error code for a subject with no message


class _Header(msgspec.Struct):
    state: str = ""  # the rest of the `Run` is skipped, not decoded


class _StoredMsg(msgspec.Struct):
    data: bytes = b""  # base64 in the reply; none in a delete marker


class _MsgGetReply(msgspec.Struct):
    message: _StoredMsg | None = None
    error: ApiError | None = None


_reply_decoder = msgspec.json.Decoder(_MsgGetReply)
_header_decoder = msgspec.json.Decoder(_Header)


class ReadFailed(Exception):
    """The header could not be read; whether the run ended is unknown."""


class EndedRuns:
    """Answers whether a run has ended, reading its header once per run until it has.

    Ended runs are remembered, at most `limit` of them (the least recently asked about go
    first): the items of a cancelled run then cost a dictionary lookup each. By run and
    submission (the items' `trace_id`): should an operator delete an ended run's record, the
    same run id submitted again is another submission, whose items are not taken for the
    ended one's. An open run is
    read again for each of its items, one request to the stream's leader (about 0.5 ms on a
    local server): work an ended run leaves queued must be found whenever it comes, and the
    roles that check spend seconds on each item.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        limit: int = 4096,
        timeout: float = READ_TIMEOUT,
        pause: float = PAUSE_AFTER_FAILURE,
    ) -> None:
        self.bus = bus
        self.limit = max(1, limit)
        self.timeout = timeout
        self.pause = pause
        self.reads = 0  # headers read (a run asked about again counts again)
        self._ended: OrderedDict[tuple[str, str], None] = OrderedDict()  # (run, trace)
        self._paused_until = 0.0
        self._header_get = through(HEADER_GET, bus.js_api)
        # A user known not to be granted the read never asks (an unknown one does: no auth)
        self.readable = bus.may_publish(self._header_get)
        if not self.readable:
            log.warning(
                "this NATS user may not read run headers (%s): work of ended runs is dropped "
                "only when its withdrawal is heard",
                self._header_get,
            )

    def __len__(self) -> int:
        return len(self._ended)

    def known(self, run_id: str, trace_id: str = "") -> bool:
        """Whether the run (as submitted: its work's `trace_id`) is already known to have
        ended (no read)."""
        if (run_id, trace_id) in self._ended:
            self._ended.move_to_end((run_id, trace_id))
            return True
        return False

    async def ended(self, run_id: str, trace_id: str = "", timeout: float | None = None) -> bool:
        """True only if the run's header says it ended; False when open, unknown or unreadable.
        `trace_id`: its work's, naming the submission. Waits at most `timeout` (default: this
        instance's) for the server."""
        if self.known(run_id, trace_id):
            return True
        if not run_id:  # (work items may leave it out) no header to read
            return False
        if not self.readable or time.monotonic() < self._paused_until:
            return False
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        try:
            state = await self._read_state(run_id, wait)
        except ReadFailed as exc:
            self._paused_until = time.monotonic() + self.pause
            log.warning(
                "cannot tell whether run %s ended, running its work: %s (not asking about "
                "runs again for %g s)",
                run_id,
                exc,
                self.pause,
            )
            return False
        if state not in TERMINAL_RUN_STATES:
            return False
        self._ended[run_id, trace_id] = None
        if len(self._ended) > self.limit:
            self._ended.popitem(last=False)
        return True

    async def _read_state(self, run_id: str, timeout: float) -> str:
        """The state the run's header records; "" when it has none (or an unreadable one)."""
        request = msgspec.json.encode({"last_by_subj": f"$KV.{subjects.RUNS_BUCKET}.{run_id}"})
        self.reads += 1
        try:
            reply = await self.bus.nc.request(self._header_get, request, timeout=timeout)
            answer = _reply_decoder.decode(reply.data)
        except Exception as exc:  # timed out, refused, no responders, disconnected, garbled
            raise ReadFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if answer.error is not None:
            if answer.error.err_code == NO_MESSAGE_FOUND:  # not stored yet
                return ""
            raise ReadFailed(f"{answer.error.description} ({answer.error.err_code})")
        if answer.message is None or not answer.message.data:  # deleted, purged
            return ""
        try:
            return _header_decoder.decode(answer.message.data).state
        except msgspec.DecodeError as exc:
            log.debug("run %s: its header is unreadable: %s", run_id, exc)
            return ""
