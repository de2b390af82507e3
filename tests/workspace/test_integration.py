"""GitIntegrator: one commit per task, conflicts refused whole, delivery as a new branch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.coordinator.events import Integrated, Merged, MergeFailed
from codeyard.sandbox import Limits, default_sandbox
from codeyard.schemas import FeedbackKind, Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.workspace.git import git
from codeyard.workspace.integration import GitIntegrator, commit_message
from codeyard.workspace.regression import SandboxedSuite
from tests.repositories import one_commit_repo


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    return one_commit_repo(tmp_path / "user", {"app.py": "def greet():\n    return 'hello'\n"})


def patch_of(repo: Path, path: str, content: str) -> Patch:
    """The diff that would turn `path` in `repo` into `content` (computed on a scratch copy)."""
    original = (repo / path).read_text() if (repo / path).exists() else None
    (repo / path).write_text(content)
    git(repo, "add", "-N", path)
    diff = git(repo, "diff")
    git(repo, "reset", "-q")
    if original is None:
        (repo / path).unlink()
    else:
        (repo / path).write_text(original)
    return Patch(text=diff)


def landed(outcome: object) -> tuple[str, int]:
    """(task, attempt) of a merge that landed; fails on anything else."""
    assert isinstance(outcome, Merged), outcome
    assert outcome.repo is not None  # where the run's code is now
    return outcome.task_id, outcome.attempt


def run_with(repo: Path, **patches: Patch) -> Run:
    tasks = {
        task_id: Task(spec=TaskSpec(id=task_id, title=f"change {task_id}"), patch=patch)
        for task_id, patch in patches.items()
    }
    return Run(run_id="r1", goal="g", repo=RepoRef(path=str(repo)), tasks=tasks)


async def test_merges_commit_once_per_task_and_deliver_a_branch(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(
        user_repo,
        a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"),
        b=patch_of(user_repo, "notes.md", "notes\n"),
    )
    run.repo = await integrator.prepare(run)
    assert Path(run.repo.snapshot).is_dir()

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert landed(await integrator.merge(run, "b", 1)) == ("b", 1)
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)  # again after a crash: no-op
    for task in run.tasks.values():
        task.state = TaskState.MERGED
    delivered = await integrator.integrate(run)

    assert delivered == Integrated(ok=True, report=f"2 tasks on branch codeyard/r1 of {user_repo}")
    subjects = git(user_repo, "log", "--format=%s", "codeyard/r1").splitlines()
    assert subjects == ["change b", "change a", "initial"]
    assert git(user_repo, "show", "codeyard/r1:app.py") == "def greet():\n    return 'hi'\n"
    # the user's checkout did not move
    assert (user_repo / "app.py").read_text() == "def greet():\n    return 'hello'\n"
    assert not (user_repo / "notes.md").exists()
    assert git(user_repo, "status", "--porcelain") == ""


async def test_a_conflicting_patch_is_refused_whole(user_repo: Path, tmp_path: Path) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    first = patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n")
    second = patch_of(user_repo, "app.py", "def greet():\n    return 'hey'\n")
    run = run_with(user_repo, a=first, b=second)
    run.repo = await integrator.prepare(run)
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)

    outcome = await integrator.merge(run, "b", 1)
    assert isinstance(outcome, MergeFailed)
    assert "app.py" in outcome.report
    clone = Path(run.repo.snapshot)
    assert git(clone, "status", "--porcelain") == ""  # nothing half-applied
    assert git(clone, "log", "--format=%s").splitlines() == ["change a", "initial"]


async def test_merges_of_one_run_may_arrive_together(user_repo: Path, tmp_path: Path) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    patches = {f"t{i}": patch_of(user_repo, f"notes{i}.md", f"note {i}\n") for i in range(6)}
    run = run_with(user_repo, **patches)
    run.repo = await integrator.prepare(run)
    outcomes = await asyncio.gather(*(integrator.merge(run, task, 1) for task in patches))
    assert [landed(outcome) for outcome in outcomes] == [(task, 1) for task in patches]
    clone = Path(run.repo.snapshot)
    assert len(git(clone, "log", "--format=%s").splitlines()) == 7
    assert git(clone, "status", "--porcelain") == ""


async def test_a_clone_left_by_a_run_of_the_same_id_on_another_repository_is_replaced(
    user_repo: Path, tmp_path: Path
) -> None:
    """The run's record was lost (a wiped NATS store), its clone was not: the id is reused."""
    other = one_commit_repo(tmp_path / "other", {"secret.py": "TOKEN = 1\n"})
    integrator = GitIntegrator(tmp_path / "data")
    await integrator.prepare(run_with(other))

    run = run_with(user_repo)
    run.repo = await integrator.prepare(run)
    clone = integrator.integration_dir("r1")
    assert sorted(path.name for path in clone.iterdir() if path.name != ".git") == ["app.py"]
    assert run.repo.head == git(user_repo, "rev-parse", "HEAD").strip()


def test_a_commit_message_tells_what_changed_and_how_it_was_checked() -> None:
    task = Task(
        spec=TaskSpec(id="auth", title="Add JWT auth", description="the plan's words"),
        summary="Adds a login endpoint that returns a signed token.",
        tests_run=12,
        approvals={"review": True, "review.security": True},
    )
    message = commit_message(task, "Codeyard-Task: r1/auth/2")
    assert message == (
        "Add JWT auth\n\n"
        "Adds a login endpoint that returns a signed token.\n\n"
        "Tests: 12 run, passing\nReviewed-by: review, review.security\n\n"
        "Codeyard-Task: r1/auth/2\n"
    )
    bare = commit_message(Task(spec=TaskSpec(id="x", title="x")), "Codeyard-Task: r1/x/1")
    assert bare == "x\n\nCodeyard-Task: r1/x/1\n"


@pytest.fixture
def tested_repo(tmp_path: Path) -> Path:
    """A repository whose suite (python -m pytest) passes."""
    files = {
        "calc.py": "def add(a, b):\n    return a + b\n",
        "tests/test_calc.py": (
            "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
        ),
    }
    return one_commit_repo(tmp_path / "tested", files)


async def test_a_merge_that_breaks_the_suite_is_reverted_and_sent_back(
    bus: Bus, tested_repo: Path, tmp_path: Path
) -> None:
    gate = await SafetyGate(bus, load_policy(None)).serve()
    suite = SandboxedSuite(default_sandbox(), BusGateClient(bus), Limits(wall_seconds=60))
    integrator = GitIntegrator(tmp_path / "data", suite)
    run = run_with(
        tested_repo,
        notes=patch_of(tested_repo, "NOTES.md", "notes\n"),
        breaks=patch_of(tested_repo, "calc.py", "def add(a, b):\n    return a - b\n"),
    )
    run.repo = await integrator.prepare(run)
    clone = Path(run.repo.snapshot)

    kept = await integrator.merge(run, "notes", 1)
    head = git(clone, "rev-parse", "HEAD")
    reverted = await integrator.merge(run, "breaks", 1)
    await gate.unsubscribe()

    assert landed(kept) == ("notes", 1)
    assert isinstance(reverted, MergeFailed)
    assert reverted.kind is FeedbackKind.REGRESSION
    assert "assert -1 == 3" in reverted.report
    assert git(clone, "rev-parse", "HEAD") == head  # back where it was, nothing half-applied
    assert git(clone, "status", "--porcelain") == ""
    assert (clone / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
