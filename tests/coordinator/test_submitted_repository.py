"""The repository a run names: a directory on the coordinator's machine, or none (a dry run).
A remote one, whose server may never answer, is refused at submission. The clone of a local
one is made outside the coordinator's steps: a large repository holds up its own submission,
never the other runs."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codeyard.bus import Bus
from codeyard.coordinator.service import Coordinator
from codeyard.follow import refused_input
from codeyard.schemas import (
    Accepted,
    CancelRun,
    ControlError,
    RepoRef,
    RunStatus,
    StatusQuery,
    SubmitRun,
    TaskSpec,
)
from codeyard.schemas.model import Run, RunState
from codeyard.workspace.git import GitError
from codeyard.workspace.integration import GitIntegrator
from tests.coordinator.harness import ask, running_coordinator, wait_until

PLAN = [TaskSpec(id="a", title="a")]


@pytest.fixture
async def coordinator(bus: Bus, tmp_path: Path) -> AsyncIterator[Coordinator]:
    integrator = GitIntegrator(tmp_path / "data")
    coordinator = Coordinator(bus, name="coord-repo", integrator=integrator)
    async with running_coordinator(coordinator) as running:
        yield running


@pytest.fixture
async def silent_git_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a clone from it waits for git's
    timeout (300 s)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_remote_repository_is_refused_and_the_coordinator_goes_on(
    bus: Bus, coordinator: Coordinator, silent_git_server: int
) -> None:
    remote = f"git://127.0.0.1:{silent_git_server}/x"
    submit = SubmitRun(run_id="remote", goal="g", repo=RepoRef(path=remote), plan=PLAN)

    refused = await asyncio.wait_for(ask(bus, "submit", submit), 10)

    assert isinstance(refused, ControlError), refused
    assert refused.field == "$.repo.path"
    assert refused.error == (
        "the repository must be the absolute path of a directory on the coordinator's machine "
        f"(URLs and host:path are not cloned): got {remote!r}"
    )
    every = await asyncio.wait_for(ask(bus, "status", StatusQuery()), 10)
    assert isinstance(every, RunStatus)
    assert every.runs == []  # not recorded


@pytest.mark.parametrize(
    "path",
    [
        "ssh://host/repo.git",
        "https://example.com/repo.git",
        "file:///tmp",
        "host:repo",
        "git@host:repo.git",
        "relative/repo",
    ],
)
async def test_what_is_not_an_absolute_local_path_is_refused(
    bus: Bus, coordinator: Coordinator, path: str
) -> None:
    submit = SubmitRun(run_id="r1", goal="g", repo=RepoRef(path=path), plan=PLAN)
    refused = await ask(bus, "submit", submit)
    assert isinstance(refused, ControlError), refused
    assert refused.field == "$.repo.path"
    assert refused.error.endswith(f"(URLs and host:path are not cloned): got {path!r}")


async def test_a_path_that_is_no_local_directory_is_refused(
    bus: Bus, coordinator: Coordinator, tmp_path: Path
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for path in (tmp_path / "missing", a_file):
        submit = SubmitRun(run_id="r1", goal="g", repo=RepoRef(path=str(path)), plan=PLAN)
        refused = await ask(bus, "submit", submit)
        assert isinstance(refused, ControlError), refused
        assert refused.field == "$.repo.path"
        assert refused.error == (
            f"the repository {str(path)!r} is no directory on the coordinator's machine"
        )


async def test_a_local_repository_and_no_repository_are_accepted(
    bus: Bus, coordinator: Coordinator, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True
        )
    local = SubmitRun(run_id="local", goal="g", repo=RepoRef(path=str(repo)), plan=PLAN)
    assert isinstance(await ask(bus, "submit", local), Accepted)
    dry = SubmitRun(run_id="dry", goal="g", plan=PLAN)
    assert isinstance(await ask(bus, "submit", dry), Accepted)


class HeldIntegrator(GitIntegrator):
    """Prepares a run's repository only once `release` is set: a clone that takes long."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def prepare(self, run: Run) -> RepoRef:
        if run.repo.path:
            self.started.set()
            await self.release.wait()
        return await super().prepare(run)


def a_repository(path: Path) -> Path:
    path.mkdir()
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=path, check=True
        )
    return path


async def test_a_slow_clone_holds_up_only_its_own_submission(bus: Bus, tmp_path: Path) -> None:
    integrator = HeldIntegrator(tmp_path / "data")
    repo = a_repository(tmp_path / "repo")
    big = SubmitRun(run_id="big", goal="g", repo=RepoRef(path=str(repo)), plan=PLAN)
    async with running_coordinator(Coordinator(bus, name="coord-held", integrator=integrator)):
        first = asyncio.create_task(ask(bus, "submit", big))
        await asyncio.wait_for(integrator.started.wait(), 10)

        # Other runs and requests go on meanwhile.
        dry = SubmitRun(run_id="dry", goal="g", plan=PLAN)
        assert isinstance(await asyncio.wait_for(ask(bus, "submit", dry), 10), Accepted)
        every = await asyncio.wait_for(ask(bus, "status", StatusQuery()), 10)
        assert isinstance(every, RunStatus)
        assert [run.run_id for run in every.runs] == ["dry"]  # not recorded before it is ready
        assert isinstance(await ask(bus, "cancel", CancelRun(run_id="dry")), Accepted)

        # The same submission again waits for the same preparation; another is refused.
        again = asyncio.create_task(ask(bus, "submit", big))
        other = SubmitRun(run_id="big", goal="another", repo=RepoRef(path=str(repo)), plan=PLAN)
        taken = await asyncio.wait_for(ask(bus, "submit", other), 10)
        assert isinstance(taken, ControlError)
        assert taken.field == "$.run_id"
        assert not first.done()
        assert not again.done()

        integrator.release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, again), 30)
        assert [type(answer) for answer in answers] == [Accepted, Accepted]
        status = await ask(bus, "status", StatusQuery(run_id="big"))
        assert isinstance(status, RunStatus)
        assert status.runs[0].repo.snapshot == str(integrator.integration_dir("big"))


async def test_a_run_cancelled_while_its_repository_is_prepared_starts_cancelled(
    bus: Bus, tmp_path: Path
) -> None:
    """`codeyard run` interrupted during a long clone says the run keeps going and how to
    cancel it: the cancel was refused (no open run), status knew no such run, and the run
    started all the same once its repository was ready."""
    integrator = HeldIntegrator(tmp_path / "data")
    repo = a_repository(tmp_path / "repo")
    big = SubmitRun(run_id="big", goal="g", repo=RepoRef(path=str(repo)), plan=PLAN)
    async with running_coordinator(Coordinator(bus, name="coord-held", integrator=integrator)):
        submitted = asyncio.create_task(ask(bus, "submit", big))
        await asyncio.wait_for(integrator.started.wait(), 10)
        preparing = await ask(bus, "status", StatusQuery(run_id="big"))
        cancelled = await ask(bus, "cancel", CancelRun(run_id="big", reason="changed my mind"))
        integrator.release.set()
        assert isinstance(await asyncio.wait_for(submitted, 30), Accepted)
        run = await wait_until(bus, "big", timeout=30)
    assert isinstance(preparing, RunStatus), preparing
    assert [(r.run_id, r.state) for r in preparing.runs] == [("big", RunState.PLANNING)]
    assert isinstance(cancelled, Accepted), cancelled
    assert (run.state, run.error) == (RunState.CANCELLED, "changed my mind")
    assert all(task.dispatches == 0 for task in run.tasks.values())  # no work was sent


class FailingIntegrator(GitIntegrator):
    def __init__(self, root: Path, error: Exception) -> None:
        super().__init__(root)
        self.error = error

    async def prepare(self, run: Run) -> RepoRef:
        raise self.error


@pytest.mark.parametrize(
    ("error", "field", "says"),
    [
        # git refused the repository: bad input (`codeyard run` exits 2)
        (GitError(("clone",), "fatal: bad object"), "$.repo", "repository: git clone failed"),
        # not the submission's fault: it may work later (exit 1)
        (
            OSError("no space left on device"),
            "",
            "could not prepare the repository, try again: OSError: no space left on device",
        ),
    ],
    ids=["git refuses it", "the disk is full"],
)
async def test_a_repository_that_cannot_be_prepared_is_refused(
    bus: Bus, tmp_path: Path, error: Exception, field: str, says: str
) -> None:
    repo = a_repository(tmp_path / "repo")
    submit = SubmitRun(run_id="r1", goal="g", repo=RepoRef(path=str(repo)), plan=PLAN)
    integrator = FailingIntegrator(tmp_path / "data", error)
    async with running_coordinator(Coordinator(bus, name="coord-fail", integrator=integrator)):
        refused = await asyncio.wait_for(ask(bus, "submit", submit), 10)
        assert isinstance(refused, ControlError), refused
        assert refused.field == field
        assert refused.error.startswith(says)
        assert refused_input(refused) == bool(field)
        unknown = await ask(bus, "status", StatusQuery(run_id="r1"))
        assert isinstance(unknown, ControlError)
