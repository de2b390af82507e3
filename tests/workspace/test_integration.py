"""GitIntegrator: one commit per task, conflicts refused whole, delivery as a new branch."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path
from typing import cast

import pytest
from nats.js.object_store import ObjectStore

from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus
from codeyard.bus.gate_client import BusGateClient
from codeyard.coordinator.events import Integrated, Merged, MergeFailed
from codeyard.sandbox import Limits, default_sandbox
from codeyard.schemas import FeedbackKind, Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.workspace.git import GitError, git
from codeyard.workspace.integration import (
    BASE_REF,
    LOCK_FILE,
    OWNER_FILE,
    PARTIAL_SUFFIX,
    GitIntegrator,
    RunIdTaken,
    commit_message,
)
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


def greet_and_notes(repo: Path) -> Run:
    """A run of two independent tasks: a changes app.py, b adds notes.md."""
    return run_with(
        repo,
        a=patch_of(repo, "app.py", "def greet():\n    return 'hi'\n"),
        b=patch_of(repo, "notes.md", "notes\n"),
    )


async def test_merges_commit_once_per_task_and_deliver_a_branch(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = greet_and_notes(user_repo)
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


async def test_the_testers_tests_are_merged_with_the_patch_in_the_tasks_commit(
    user_repo: Path, tmp_path: Path
) -> None:
    """They counted in the commit's "Tests: N run, passing" and were never delivered."""
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    test_file = "def test_greet():\n    assert greet() == 'hi'\n"
    run.tasks["a"].tests = patch_of(user_repo, "test_app.py", test_file)
    run.repo = await integrator.prepare(run)

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    clone = integrator.integration_dir("r1")
    assert git(clone, "show", "--name-only", "--format=%s", "HEAD").split() == [
        "change",
        "a",
        "app.py",
        "test_app.py",
    ]
    assert git(clone, "show", "HEAD:test_app.py") == test_file


async def test_testers_tests_that_do_not_apply_are_a_conflict_and_nothing_is_committed(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    run.tasks["a"].tests = patch_of(user_repo, "app.py", "def greet():\n    return 'hey'\n")
    run.repo = await integrator.prepare(run)

    failed = await integrator.merge(run, "a", 1)
    assert isinstance(failed, MergeFailed)
    assert failed.kind is FeedbackKind.CONFLICT
    clone = integrator.integration_dir("r1")
    assert git(clone, "log", "--format=%s").splitlines() == ["initial"]
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


async def test_a_run_id_differing_only_in_case_is_refused_where_it_would_share_a_directory(
    user_repo: Path, tmp_path: Path
) -> None:
    """On macOS's or Windows' file system `runs/Fix` is `runs/fix`: preparing `fix` took the
    clone of `Fix` for one left by another submission, and discarded it under the running
    run. Simulated here by the directory's owner, as such a file system would show it."""
    integrator = GitIntegrator(tmp_path / "data")
    upper = run_with(user_repo)
    upper.run_id = "Fix"
    await integrator.prepare(upper)
    assert (integrator.root / "Fix" / OWNER_FILE).read_text() == "Fix\n"
    (integrator.root / "fix").mkdir()
    (integrator.root / "fix" / OWNER_FILE).write_text("Fix\n")  # what `runs/fix` shows there
    lower = run_with(user_repo)
    lower.run_id = "fix"
    with pytest.raises(RunIdTaken, match="'fix' and the run 'Fix' share the directory"):
        await integrator.prepare(lower)
    assert not (integrator.root / "fix" / "integration").exists()  # nothing made, or removed


@pytest.mark.parametrize("earlier", ["s1", ""], ids=["recorded", "made-by-an-older-version"])
async def test_a_clone_left_by_an_earlier_submission_of_the_same_id_is_replaced(
    user_repo: Path, tmp_path: Path, earlier: str
) -> None:
    """The run's record was lost (a wiped NATS store), its clone was not, and the id is used
    again on the same repository: the old run's commit of the same task and attempt must not
    pass for the new one's merge, nor its base for the repository's head now."""
    data = tmp_path / "data"
    old = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'old'\n"))
    old.submission = earlier
    old.repo = await GitIntegrator(data).prepare(old)
    assert landed(await GitIntegrator(data).merge(old, "a", 1)) == ("a", 1)
    (user_repo / "more.py").write_text("MORE = 1\n")  # the user moved on meanwhile
    git(user_repo, "add", "more.py")
    git(user_repo, "commit", "-q", "-m", "the user's work")

    integrator = GitIntegrator(data)  # a new coordinator, with no record of the old run
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'new'\n"))
    run.submission = "s2"
    run.repo = await integrator.prepare(run)
    assert run.repo.head == git(user_repo, "rev-parse", "HEAD").strip()
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    run.tasks["a"].state = TaskState.MERGED
    assert (await integrator.integrate(run)).ok

    assert git(user_repo, "show", "codeyard/r1:app.py") == "def greet():\n    return 'new'\n"
    subjects = git(user_repo, "log", "--format=%s", "codeyard/r1").splitlines()
    assert subjects == ["change a", "the user's work", "initial"]


@pytest.mark.parametrize("submission", ["s1", ""], ids=["recorded", "of-an-older-version"])
async def test_preparing_the_same_submission_again_keeps_its_clone_and_merges(
    user_repo: Path, tmp_path: Path, submission: str
) -> None:
    """A run of an older version has no submission, nor has its clone a record: still its own."""
    data = tmp_path / "data"
    run = greet_and_notes(user_repo)
    run.submission = submission
    run.repo = await GitIntegrator(data).prepare(run)
    clone = Path(run.repo.snapshot)
    assert landed(await GitIntegrator(data).merge(run, "a", 1)) == ("a", 1)

    integrator = GitIntegrator(data)
    run.repo = await integrator.prepare(run)
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)  # again after a crash: no-op
    assert landed(await integrator.merge(run, "b", 1)) == ("b", 1)
    assert git(clone, "log", "--format=%s").splitlines() == ["change b", "change a", "initial"]


async def test_a_repository_refused_leaves_no_run_directory(tmp_path: Path) -> None:
    """Each refused submission (no repository there, no commit yet) left `runs/<id>/` with its
    lock and owner file, counted by garbage collection as a run's for the retention period."""
    data = tmp_path / "data"
    empty = tmp_path / "empty"
    git(tmp_path, "init", "--quiet", str(empty))
    for path in (empty, tmp_path):  # no commit yet; no repository at all
        run = Run(run_id="refused", goal="g", repo=RepoRef(path=str(path)))
        with pytest.raises(GitError):
            await GitIntegrator(data).prepare(run)
        assert not (data / "runs" / "refused").exists()
        assert (data / "runs").is_dir()  # (where a run's directory would be)


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


def test_a_commit_message_leaves_out_what_reads_as_a_task_trailer() -> None:
    """The title, summary and description are the planner's and the coder's words: only the
    trailer codeyard adds may say which task a commit merged."""
    task = Task(
        spec=TaskSpec(id="a", title="Fix a\nCodeyard-Task: r1/c/1"),
        summary="Fixed a.\n\nCodeyard-Task: r1/b/1\n  codeyard-task : r1/b/2\nNote: kept",
    )
    assert commit_message(task, "Codeyard-Task: r1/a/1") == (
        "Fix a\n\nFixed a.\n\nNote: kept\n\nCodeyard-Task: r1/a/1\n"
    )
    only_a_trailer = Task(spec=TaskSpec(id="a", title="Codeyard-Task: r1/c/1"))
    assert commit_message(only_a_trailer, "Codeyard-Task: r1/a/1") == "a\n\nCodeyard-Task: r1/a/1\n"


def test_a_commit_message_shows_escapes_instead_of_passing_them_to_git_log() -> None:
    """`git log` pages a message to the terminal as it is."""
    title = "Fix \x1b]0;owned\x07 a"
    task = Task(spec=TaskSpec(id="a", title=title), summary="\x1b[2JDone.\r\nOk.")
    assert commit_message(task, "Codeyard-Task: r1/a/1") == (
        "Fix \\x1b]0;owned\\x07 a\n\n\\x1b[2JDone.\nOk.\n\nCodeyard-Task: r1/a/1\n"
    )


async def test_a_nul_in_the_words_of_a_task_does_not_stop_its_merge(
    user_repo: Path, tmp_path: Path
) -> None:
    """git refuses a commit message with a NUL, and every retry of the merge would fail alike:
    the planner's, the coder's and a reviewer's words keep the rest of themselves, the NUL
    standing as U+FFFD."""
    integrator = GitIntegrator(tmp_path / "data")
    run = greet_and_notes(user_repo)
    run.tasks["a"].spec = TaskSpec(id="a", title="say\0hi")
    run.tasks["a"].summary = "Says hi\0 now."
    run.tasks["a"].approvals = {"review\0er": True}
    run.tasks["b"].spec = TaskSpec(id="b", title="change b", description="the plan's\0words")
    run.repo = await integrator.prepare(run)

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert landed(await integrator.merge(run, "b", 1)) == ("b", 1)

    clone = Path(run.repo.snapshot)
    messages = git(clone, "log", "--format=%B%x1e", "-2").split("\x1e")
    assert [message.strip() for message in messages if message.strip()] == [
        "change b\n\nthe plan's\ufffdwords\n\nCodeyard-Task: r1/b/1",
        "say\ufffdhi\n\nSays hi\ufffd now.\n\nReviewed-by: review\ufffder\n\nCodeyard-Task: r1/a/1",
    ]
    assert (clone / "notes.md").read_text() == "notes\n"


async def test_a_summary_naming_another_task_does_not_make_it_merged(
    user_repo: Path, tmp_path: Path
) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run = greet_and_notes(user_repo)
    run.tasks["a"].summary = "Says hi (b, Codeyard-Task: r1/b/1, is next)."
    run.repo = await integrator.prepare(run)

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert landed(await integrator.merge(run, "b", 1)) == ("b", 1)

    clone = Path(run.repo.snapshot)
    assert git(clone, "log", "--format=%s").splitlines() == ["change b", "change a", "initial"]
    assert (clone / "notes.md").read_text() == "notes\n"


async def test_the_users_own_commits_never_count_as_merges(user_repo: Path, tmp_path: Path) -> None:
    """Here the user merged the branch of an earlier run that had the same id."""
    git(user_repo, "commit", "-q", "--allow-empty", "-m", "earlier\n\nCodeyard-Task: r1/a/1")
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    run.repo = await integrator.prepare(run)

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert git(Path(run.repo.snapshot), "show", "HEAD:app.py") == "def greet():\n    return 'hi'\n"


async def test_a_clone_made_before_its_start_was_recorded_still_finds_its_merges(
    user_repo: Path, tmp_path: Path
) -> None:
    """Clones of runs open across an upgrade: their start is the remote head they cloned."""
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    run.repo = await integrator.prepare(run)
    clone = Path(run.repo.snapshot)
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    git(clone, "update-ref", "-d", BASE_REF)

    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)  # again after a crash: no-op
    assert git(clone, "log", "--format=%s").splitlines() == ["change a", "initial"]
    assert git(clone, "rev-parse", BASE_REF) == git(user_repo, "rev-parse", "main")


async def test_a_clone_cut_short_is_never_taken_for_a_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git leaves a clone whose checkout failed (here a filter; a timeout or a crash alike)
    in place, origin set and files missing; preparing the run again must not merge onto it."""
    files = {".gitattributes": "*.py filter=broken\n", "app.py": "print('hello')\n"}
    user_repo = one_commit_repo(tmp_path / "user", files)
    integrator = GitIntegrator(tmp_path / "data")
    run = run_with(user_repo, notes=patch_of(user_repo, "notes.md", "notes\n"))
    git_config = {"filter.broken.smudge": "false", "filter.broken.required": "true"}
    monkeypatch.setenv("GIT_CONFIG_COUNT", str(len(git_config)))
    for index, (key, value) in enumerate(git_config.items()):
        monkeypatch.setenv(f"GIT_CONFIG_KEY_{index}", key)
        monkeypatch.setenv(f"GIT_CONFIG_VALUE_{index}", value)
    with pytest.raises(GitError, match="smudge filter broken failed"):
        await integrator.prepare(run)
    assert not integrator.integration_dir("r1").exists()
    monkeypatch.delenv("GIT_CONFIG_COUNT")  # the filter works again: the run is resubmitted

    run.repo = await integrator.prepare(run)
    assert landed(await integrator.merge(run, "notes", 1)) == ("notes", 1)
    run.tasks["notes"].state = TaskState.MERGED
    assert (await integrator.integrate(run)).ok

    delivered = git(user_repo, "ls-tree", "-r", "--name-only", "codeyard/r1").split()
    assert delivered == [".gitattributes", "app.py", "notes.md"]
    assert git(user_repo, "diff", "--name-only", "main", "codeyard/r1").split() == ["notes.md"]


async def test_what_an_interrupted_clone_left_is_removed(user_repo: Path, tmp_path: Path) -> None:
    integrator = GitIntegrator(tmp_path / "data")
    run_dir = integrator.root / "r1"
    leftover = run_dir / f"integration.1234{PARTIAL_SUFFIX}"  # the coordinator was killed
    (leftover / ".git").mkdir(parents=True)

    await integrator.prepare(run_with(user_repo))
    assert sorted(path.name for path in run_dir.iterdir()) == ["integration", LOCK_FILE, OWNER_FILE]


async def test_a_merge_clears_what_a_coordinator_killed_mid_merge_left(
    user_repo: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    run = greet_and_notes(user_repo)
    run.repo = await GitIntegrator(data).prepare(run)
    clone = Path(run.repo.snapshot)
    # Killed while applying a's patch: half of it staged, half written, git's lock left.
    (clone / "app.py").write_text("def greet():\n    return 'h")
    git(clone, "add", "app.py")
    (clone / "half.py").write_text("x = ")
    (clone / ".git" / "index.lock").write_text("")

    standby = GitIntegrator(data)  # takes over on the same disk and merges both again
    assert landed(await standby.merge(run, "a", 1)) == ("a", 1)
    assert landed(await standby.merge(run, "b", 1)) == ("b", 1)

    assert git(clone, "log", "--format=%s").splitlines() == ["change b", "change a", "initial"]
    assert git(clone, "show", "--name-only", "--format=", "HEAD").split() == ["notes.md"]
    assert git(clone, "status", "--porcelain", "--ignored") == ""


class ScriptedSuite:
    """The suite's verdict per task, given by the test; `failures` waits for `release` first
    when there is one, as a long suite keeps the merge waiting."""

    def __init__(self, failing: set[str], release: asyncio.Event | None = None) -> None:
        self.failing = failing
        self.release = release
        self.running = asyncio.Event()

    async def failures(
        self, repo: Path, run_id: str, task_id: str, attempt: int, test_command: str = ""
    ) -> str | None:
        self.running.set()
        if self.release is not None:
            await self.release.wait()
        return f"FAILED test_{task_id}" if task_id in self.failing else None


def lock_is_free(path: Path) -> bool:
    """Whether another process could take the lock file at `path` now."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the flock when it was taken
    return True


async def test_coordinators_sharing_the_data_dir_merge_a_run_in_turn(
    user_repo: Path, tmp_path: Path
) -> None:
    """A deposed leader still running a merge's suite and its successor merging the same task:
    each undoes its own failed merge, one after the other, and a merged task stays."""
    data = tmp_path / "data"
    run = run_with(
        user_repo,
        kept=patch_of(user_repo, "notes.md", "notes\n"),
        breaks=patch_of(user_repo, "app.py", "def greet():\n    return None\n"),
    )
    release = asyncio.Event()
    long_suite = ScriptedSuite({"breaks"}, release)
    deposed = GitIntegrator(data, long_suite)
    successor = GitIntegrator(data, ScriptedSuite({"breaks"}))
    run.repo = await successor.prepare(run)
    clone = Path(run.repo.snapshot)
    assert landed(await successor.merge(run, "kept", 1)) == ("kept", 1)

    first = asyncio.create_task(deposed.merge(run, "breaks", 1))
    await asyncio.wait_for(long_suite.running.wait(), 30)
    assert not lock_is_free(data / "runs" / "r1" / LOCK_FILE)
    second = asyncio.create_task(successor.merge(run, "breaks", 1))
    release.set()
    outcomes = await asyncio.gather(first, second)

    assert [type(outcome) for outcome in outcomes] == [MergeFailed, MergeFailed]
    assert git(clone, "log", "--format=%s").splitlines() == ["change kept", "initial"]
    assert git(clone, "status", "--porcelain") == ""
    assert lock_is_free(data / "runs" / "r1" / LOCK_FILE)


async def test_undoing_a_merge_leaves_a_head_that_moved_on_alone(
    user_repo: Path, tmp_path: Path
) -> None:
    """Undone by someone else meanwhile (a coordinator of an older version, not taking the
    lock), the failed merge is not undone twice: that would drop the task merged before it."""
    run = run_with(
        user_repo,
        kept=patch_of(user_repo, "notes.md", "notes\n"),
        breaks=patch_of(user_repo, "app.py", "def greet():\n    return None\n"),
    )

    class UndoneMeanwhile(ScriptedSuite):
        async def failures(
            self, repo: Path, run_id: str, task_id: str, attempt: int, test_command: str = ""
        ) -> str | None:
            git(repo, "reset", "--quiet", "--hard", "HEAD~1")
            return await super().failures(repo, run_id, task_id, attempt)

    integrator = GitIntegrator(tmp_path / "data")
    run.repo = await integrator.prepare(run)
    clone = Path(run.repo.snapshot)
    assert landed(await integrator.merge(run, "kept", 1)) == ("kept", 1)
    integrator.suite = UndoneMeanwhile({"breaks"})

    outcome = await integrator.merge(run, "breaks", 1)
    assert isinstance(outcome, MergeFailed)
    assert git(clone, "log", "--format=%s").splitlines() == ["change kept", "initial"]


async def test_a_merge_whose_suite_cannot_run_leaves_nothing_on_the_head(
    user_repo: Path, tmp_path: Path
) -> None:
    """The sandbox (or the object store, publishing the head) is away: the merge fails, and its
    retry finds the head as it was, not a commit no suite ever passed."""

    class SandboxAway:
        async def failures(
            self, repo: Path, run_id: str, task_id: str, attempt: int, test_command: str = ""
        ) -> None:
            raise RuntimeError("sandbox unavailable")

    integrator = GitIntegrator(tmp_path / "data", SandboxAway())
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    run.repo = await integrator.prepare(run)
    clone = Path(run.repo.snapshot)

    with pytest.raises(RuntimeError, match="sandbox unavailable"):
        await integrator.merge(run, "a", 1)
    assert git(clone, "log", "--format=%s").splitlines() == ["initial"]
    assert git(clone, "status", "--porcelain") == ""

    integrator.suite = ScriptedSuite(failing=set())  # it is back: the retry lands
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert git(clone, "log", "--format=%s").splitlines() == ["change a", "initial"]


async def test_a_merge_cancelled_after_its_commit_leaves_nothing_on_the_head(
    user_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leadership is lost (or the coordinator shuts down) while git commits the merge: the
    commit, which no suite passed on, is taken off again once git is done, and the next leader's
    merge applies the patch afresh."""
    committed, resume = threading.Event(), threading.Event()
    merge = GitIntegrator._merge

    def merge_then_wait(
        self: GitIntegrator, run: Run, task_id: str, attempt: int, patches: list[str]
    ) -> tuple[Merged | MergeFailed, str | None]:
        outcome = merge(self, run, task_id, attempt, patches)
        committed.set()
        resume.wait(30)  # the thread goes on after the cancellation, as git does
        return outcome

    integrator = GitIntegrator(tmp_path / "data", ScriptedSuite(failing=set()))
    run = run_with(user_repo, a=patch_of(user_repo, "app.py", "def greet():\n    return 'hi'\n"))
    run.repo = await integrator.prepare(run)
    clone = Path(run.repo.snapshot)
    monkeypatch.setattr(GitIntegrator, "_merge", merge_then_wait)
    merging = asyncio.create_task(integrator.merge(run, "a", 1))
    await asyncio.to_thread(committed.wait, 30)
    assert git(clone, "log", "--format=%s").splitlines() == ["change a", "initial"]

    merging.cancel()
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await merging

    assert git(clone, "log", "--format=%s").splitlines() == ["initial"]
    assert git(clone, "status", "--porcelain") == ""
    monkeypatch.undo()
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert git(clone, "log", "--format=%s").splitlines() == ["change a", "initial"]


class StoreAway:
    """An object store that cannot be reached."""

    def __getattr__(self, name: str) -> object:
        raise ConnectionError("the object store is unavailable")


async def test_a_merge_found_under_later_ones_stands_when_its_head_cannot_be_published(
    user_repo: Path, tmp_path: Path
) -> None:
    """A coordinator crashed after merging a, before recording it, and b was merged on top:
    replayed, a's merge finds its commit, which stays on the branch whatever happens. Failing
    because the head cannot be published would send a back to its coder (the coordinator makes
    an integration error a conflict), and a's next attempt would be merged over a's commit."""
    integrator = GitIntegrator(tmp_path / "data")
    run = greet_and_notes(user_repo)
    run.repo = await integrator.prepare(run)
    assert landed(await integrator.merge(run, "a", 1)) == ("a", 1)
    assert landed(await integrator.merge(run, "b", 1)) == ("b", 1)
    clone = Path(run.repo.snapshot)
    head = git(clone, "rev-parse", "HEAD")

    integrator.artifacts = cast(ObjectStore, StoreAway())
    replayed = await integrator.merge(run, "a", 1)

    assert replayed == Merged("a", 1)  # merged; the head is published with the next merge
    assert git(clone, "rev-parse", "HEAD") == head


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


async def test_the_suite_after_a_merge_runs_the_runs_test_command(bus: Bus, tmp_path: Path) -> None:
    """Tests where detection finds none (checks/, no pytest configuration): the run's own
    command finds the merge that breaks them, and it is reverted."""
    files = {
        "calc.py": "def add(a, b):\n    return a + b\n",
        "checks/test_calc.py": (
            "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
        ),
    }
    repo = one_commit_repo(tmp_path / "checked", files)
    gate = await SafetyGate(bus, load_policy(None)).serve()  # it allows python -m pytest
    suite = SandboxedSuite(default_sandbox(), BusGateClient(bus), Limits(wall_seconds=60))
    integrator = GitIntegrator(tmp_path / "data", suite)
    run = run_with(repo, breaks=patch_of(repo, "calc.py", "def add(a, b):\n    return a - b\n"))
    run.test_command = "python -m pytest -q checks"
    run.repo = await integrator.prepare(run)
    head = git(Path(run.repo.snapshot), "rev-parse", "HEAD")

    reverted = await integrator.merge(run, "breaks", 1)
    await gate.unsubscribe()

    assert isinstance(reverted, MergeFailed), reverted
    assert reverted.kind is FeedbackKind.REGRESSION
    assert "assert -1 == 3" in reverted.report
    assert git(Path(run.repo.snapshot), "rev-parse", "HEAD") == head
