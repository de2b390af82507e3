"""What garbage collection of the artifacts store deletes: the pure decision, exhaustively."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from codeyard.schemas.messages import StoredArtifact
from codeyard.schemas.model import Patch, RepoRef, Run, SnapshotBundle, SnapshotRef, Task, TaskSpec
from codeyard.workspace.retention import (
    kind_of,
    referenced_artifacts,
    run_references,
    sweep,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=30)
OLD = NOW - timedelta(days=45)
RECENT = NOW - timedelta(days=2)


def bundle(n: int) -> SnapshotBundle:
    sha = f"{n:064x}"
    return SnapshotBundle(name=f"git-bundle/sha256-{sha}", sha256=sha, size=1000 + n, head="a" * 40)


def patch_name(n: int) -> str:
    return f"patch/sha256-{n:064x}"


def run_with(run_id: str, bundles: list[SnapshotBundle], patches: tuple[str, ...] = ()) -> Run:
    tasks = {
        f"t{i}": Task(spec=TaskSpec(id=f"t{i}", title="t"), patch=Patch(object_name=name))
        for i, name in enumerate(patches)
    }
    repo = RepoRef(
        path="/repo", head="a" * 40, bundles=SnapshotRef(head="a" * 40, bundles=tuple(bundles))
    )
    return Run(run_id=run_id, goal="g", repo=repo, tasks=tasks)


def stored(name: str, modified_at: datetime = OLD, size: int = 10) -> StoredArtifact:
    return StoredArtifact(name=name, size=size, modified_at=modified_at)


def test_a_run_needs_every_bundle_of_its_chain_and_every_stored_patch_of_its_tasks() -> None:
    run = run_with("r1", [bundle(1), bundle(2), bundle(3)], (patch_name(7),))
    run.tasks["inline"] = Task(spec=TaskSpec(id="inline", title="i"), patch=Patch(text="+x\n"))
    run.tasks["none"] = Task(spec=TaskSpec(id="none", title="n"))
    assert run_references(run) == {bundle(1).name, bundle(2).name, bundle(3).name, patch_name(7)}


def test_a_run_without_a_snapshot_needs_only_its_patches() -> None:
    run = Run(
        run_id="dry",
        goal="g",
        tasks={"t": Task(spec=TaskSpec(id="t", title="t"), patch=Patch(object_name=patch_name(1)))},
    )
    assert run_references(run) == {patch_name(1)}
    assert run_references(Run(run_id="empty", goal="g")) == set()


def test_what_open_runs_use_stays_however_old_and_the_rest_goes_once_old() -> None:
    open_run = run_with("open", [bundle(1), bundle(2)], (patch_name(1),))
    objects = [
        stored(bundle(1).name),
        stored(bundle(2).name),
        stored(patch_name(1)),
        stored(bundle(9).name),  # a finished run's
        stored(patch_name(9)),
    ]
    decision = sweep(objects, referenced_artifacts([open_run]), NOW, RETENTION)
    assert [found.name for found in decision.expired] == [bundle(9).name, patch_name(9)]
    assert (decision.referenced, decision.recent, decision.foreign) == (3, 0, 0)


def test_a_bundle_shared_by_a_finished_and_an_open_run_stays() -> None:
    finished = run_with("done", [bundle(1), bundle(2)])
    still_open = run_with("open", [bundle(1), bundle(3)])  # the same full bundle, content addressed
    objects = [stored(bundle(n).name) for n in (1, 2, 3)]
    decision = sweep(objects, referenced_artifacts([still_open]), NOW, RETENTION)
    assert [found.name for found in decision.expired] == [bundle(2).name]
    assert bundle(1).name in run_references(finished)


def test_nothing_younger_than_the_retention_goes_even_unreferenced() -> None:
    objects = [
        stored(patch_name(1), RECENT),
        stored(patch_name(2), NOW - RETENTION),  # exactly the retention: not older
        stored(patch_name(3), NOW - RETENTION - timedelta(seconds=1)),
        stored(patch_name(4), NOW + timedelta(seconds=5)),  # another machine's clock ahead
    ]
    decision = sweep(objects, frozenset(), NOW, RETENTION)
    assert [found.name for found in decision.expired] == [patch_name(3)]
    assert decision.recent == 3


def test_objects_codeyard_did_not_write_are_never_collected() -> None:
    objects = [stored("reports/run-1.html"), stored("git-bundle/other"), stored(bundle(1).name)]
    decision = sweep(objects, frozenset(), NOW, RETENTION)
    assert [found.name for found in decision.expired] == [bundle(1).name]
    assert decision.foreign == 2


def test_expired_objects_come_oldest_first() -> None:
    objects = [
        stored(patch_name(1), OLD),
        stored(patch_name(2), OLD - timedelta(days=10)),
        stored(patch_name(0), OLD),
    ]
    decision = sweep(objects, frozenset(), NOW, RETENTION)
    assert [found.name for found in decision.expired] == [
        patch_name(2),
        patch_name(0),
        patch_name(1),
    ]


def test_deletions_are_counted_by_kind() -> None:
    assert kind_of(bundle(1).name) == "bundle"
    assert kind_of(patch_name(1)) == "patch"
    assert kind_of("reports/x") == "other"


names = st.sampled_from(
    [bundle(n).name for n in range(4)] + [patch_name(n) for n in range(4)] + ["other/x"]
)
ages = st.integers(min_value=-2, max_value=90).map(lambda days: NOW - timedelta(days=days))


@given(
    objects=st.lists(st.builds(stored, names, ages), unique_by=lambda found: found.name),
    referenced=st.frozensets(names),
)
def test_every_object_is_deleted_or_kept_for_one_reason(
    objects: list[StoredArtifact], referenced: frozenset[str]
) -> None:
    decision = sweep(objects, referenced, NOW, RETENTION)
    kept = decision.referenced + decision.recent + decision.foreign
    assert len(decision.expired) + kept == len(objects)
    for found in decision.expired:
        assert found.name not in referenced
        assert NOW - found.modified_at > RETENTION
        assert kind_of(found.name) != "other"
