"""Which integration clones garbage collection removes: the pure decision, exhaustively."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES
from codeyard.schemas.model import Run, RunState
from codeyard.workspace.clone_retention import sweep_clones
from codeyard.workspace.integration_clones import CloneOnDisk

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=30)
OLD = NOW - timedelta(days=45)
RECENT = NOW - timedelta(days=2)


def on_disk(run_id: str, changed_at: datetime = OLD) -> CloneOnDisk:
    return CloneOnDisk(run_id, Path("/data/runs") / run_id, changed_at)


def run(run_id: str, state: RunState, updated_at: datetime = OLD) -> Run:
    return Run(run_id=run_id, goal="g", state=state, created_at=OLD, updated_at=updated_at)


def recorded(*runs: Run) -> dict[str, Run]:
    return {each.run_id: each for each in runs}


def test_the_clone_of_a_run_that_ended_long_ago_goes_whatever_its_ending() -> None:
    runs = recorded(
        run("done", RunState.DONE), run("failed", RunState.FAILED), run("gone", RunState.CANCELLED)
    )
    clones = [on_disk("done", RECENT), on_disk("failed"), on_disk("gone")]
    decision = sweep_clones(clones, frozenset(), runs, NOW, RETENTION)
    expired = {found.clone.run_id: found.run_state for found in decision.expired}
    assert expired == {
        "done": RunState.DONE,  # its clone changed lately: the run's end is what counts
        "failed": RunState.FAILED,
        "gone": RunState.CANCELLED,
    }
    assert all(found.unused_since == OLD for found in decision.expired)


def test_an_open_runs_clone_stays_however_old() -> None:
    runs = recorded(
        run("executing", RunState.EXECUTING),
        run("paused", RunState.AWAITING_APPROVAL),
        run("open-ended", RunState.DONE),  # the record lags: the coordinator has it open
    )
    clones = [on_disk("executing"), on_disk("paused"), on_disk("open-ended"), on_disk("loaded")]
    decision = sweep_clones(clones, frozenset({"open-ended", "loaded"}), runs, NOW, RETENTION)
    assert decision.expired == ()
    assert (decision.open, decision.recent) == (4, 0)


def test_a_run_that_ended_within_the_retention_keeps_its_clone() -> None:
    runs = recorded(
        run("lately", RunState.FAILED, RECENT),
        run("exactly", RunState.DONE, NOW - RETENTION),  # the retention itself: not older
        run("just-over", RunState.DONE, NOW - RETENTION - timedelta(seconds=1)),
    )
    clones = [on_disk("lately"), on_disk("exactly"), on_disk("just-over")]
    decision = sweep_clones(clones, frozenset(), runs, NOW, RETENTION)
    assert [found.clone.run_id for found in decision.expired] == ["just-over"]
    assert decision.recent == 2


def test_a_clone_with_no_run_goes_once_it_did_not_change_for_the_retention() -> None:
    # a run wiped from cy_runs, and one being submitted: cloned, not recorded yet
    clones = [on_disk("wiped", OLD), on_disk("submitting", NOW - timedelta(seconds=3))]
    decision = sweep_clones(clones, frozenset(), {}, NOW, RETENTION)
    [found] = decision.expired
    assert found.clone.run_id == "wiped"
    assert found.run_state is None
    assert found.unused_since == OLD
    assert decision.recent == 1


def test_expired_clones_come_longest_unused_first() -> None:
    runs = recorded(run("b", RunState.DONE, OLD), run("c", RunState.DONE, OLD - timedelta(days=9)))
    clones = [on_disk("b"), on_disk("c"), on_disk("a", OLD)]
    decision = sweep_clones(clones, frozenset(), runs, NOW, RETENTION)
    assert [found.clone.run_id for found in decision.expired] == ["c", "a", "b"]


run_ids = st.sampled_from(["r0", "r1", "r2", "r3", "r4"])
ages = st.integers(min_value=-2, max_value=90).map(lambda days: NOW - timedelta(days=days))
states = st.sampled_from(list(RunState))


@given(
    clones=st.lists(st.builds(on_disk, run_ids, ages), unique_by=lambda found: found.run_id),
    runs=st.dictionaries(run_ids, st.tuples(states, ages)),
    open_ids=st.frozensets(run_ids),
)
def test_every_clone_is_removed_or_kept_for_one_reason(
    clones: list[CloneOnDisk],
    runs: dict[str, tuple[RunState, datetime]],
    open_ids: frozenset[str],
) -> None:
    headers = {run_id: run(run_id, state, ended) for run_id, (state, ended) in runs.items()}
    decision = sweep_clones(clones, open_ids, headers, NOW, RETENTION)
    assert len(decision.expired) + decision.open + decision.recent == len(clones)
    for found in decision.expired:
        run_id = found.clone.run_id
        assert run_id not in open_ids
        header = headers.get(run_id)
        if header is None:
            assert found.run_state is None
            assert NOW - found.clone.changed_at > RETENTION
        else:
            assert header.state in TERMINAL_RUN_STATES
            assert NOW - header.updated_at > RETENTION
