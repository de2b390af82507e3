"""Which integration clones garbage collection removes: pure decisions, no I/O, no clock.

A run's clone (`GitIntegrator`) is where its tasks are merged; nothing writes to it once the
run has ended. What is needed after that lives elsewhere: a done run's result is the branch
`codeyard/<run>` of the user's repository (where `codeyard rollback` moves it, without the
clone), and `codeyard report` reads the run's record and events. Only the merged tasks of a
failed or cancelled run are nowhere else, which is why a clone outlives its run by the
retention rather than going when the run ends.

A clone goes when either holds:

- its run ended (done, failed or cancelled) longer than the retention ago, by `Run.updated_at`
  (an ended run is not written again);
- no run of its id exists (`cy_runs` lost or wiped it) and the clone did not change for the
  retention. Its age is all there is to go by, and it has to be: a clone is made while its run
  is being submitted, before the run is recorded anywhere.

Never the clone of an open run, however old: one the coordinator has open, or one whose record
says it has not ended (a run the coordinator could not load is such a one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas.model import Run, RunState
from codeyard.workspace.integration_clones import CloneOnDisk
from codeyard.workspace.retention import is_expired


@dataclass(frozen=True)
class ExpiredClone:
    clone: CloneOnDisk
    unused_since: datetime  # when its run ended; with no run, when the clone last changed
    run_state: RunState | None  # None: no run of this id exists


@dataclass(frozen=True)
class CloneSweep:
    """The decision over one listing of the clones."""

    expired: tuple[ExpiredClone, ...]  # to remove, longest unused first
    open: int  # kept: their run is open
    recent: int  # kept: unused for less than the retention


def sweep_clones(
    clones: Iterable[CloneOnDisk],
    open_runs: frozenset[str],
    runs: Mapping[str, Run],
    now: datetime,
    retention: timedelta,
) -> CloneSweep:
    """What to remove among `clones`, given the ids of the open runs and every run recorded
    (by id; their headers are enough)."""
    expired: list[ExpiredClone] = []
    kept_open = recent = 0
    for clone in clones:
        run = runs.get(clone.run_id)
        if clone.run_id in open_runs or (run is not None and run.state not in TERMINAL_RUN_STATES):
            kept_open += 1
            continue
        unused_since = clone.changed_at if run is None else run.updated_at
        if not is_expired(unused_since, now, retention):
            recent += 1
            continue
        expired.append(ExpiredClone(clone, unused_since, None if run is None else run.state))
    expired.sort(key=lambda found: (found.unused_since, found.clone.run_id))
    return CloneSweep(expired=tuple(expired), open=kept_open, recent=recent)
