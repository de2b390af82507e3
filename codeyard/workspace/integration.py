"""`GitIntegrator`: merges approved patches into a run's integration clone, one commit per
task, and delivers the result as the branch `codeyard/<run_id>` of the user's repository.

The integration clone lives under the data dir; the user's working tree and current branch are
never touched (delivery is a fetch into a new branch). Merging is idempotent: each commit
carries the task and attempt as trailers, so a merge repeated after a coordinator crash finds
its commit and does not apply the patch twice.

A run submitted without a repository is a dry run: merges are recorded, nothing is written.

The clone stays after its run ends (a failed or cancelled run's merged tasks are nowhere else)
until garbage collection removes it (`codeyard.workspace.clone_retention`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nats.js.object_store import ObjectStore

from codeyard.coordinator.events import Integrated, Merged, MergeFailed, ParkTask
from codeyard.coordinator.integrator import LedgerIntegrator
from codeyard.schemas.model import FeedbackKind, RepoRef, Run, Task, TaskState
from codeyard.workspace.git import GitError, git
from codeyard.workspace.integration_clones import CLONE_DIR, remove_clone
from codeyard.workspace.patch_store import inline
from codeyard.workspace.regression import RegressionSuite
from codeyard.workspace.snapshots import publish_snapshot

# The trailer of each task's commit on the result branch; `rollback` finds tasks by it.
TASK_TRAILER = "Codeyard-Task"
# `<data dir>/runs/<run_id>/integration` (CLONE_DIR): each run's directory holds its clone.
RUNS_DIR = "runs"


def _origin(clone: Path) -> str:
    try:
        return git(clone, "config", "--get", "remote.origin.url").strip()
    except GitError:  # no origin at all
        return ""


def result_branch(run_id: str) -> str:
    return f"codeyard/{run_id}"


def commit_message(task: Task, trailer: str) -> str:
    """Title; the coder's summary (else the task's description); tests and reviews; trailer."""
    body = (task.summary or task.spec.description).strip()
    facts = []
    if task.tests_run:
        facts.append(f"Tests: {task.tests_run} run, passing")
    reviewers = sorted(name for name, approved in task.approvals.items() if approved)
    if reviewers:
        facts.append(f"Reviewed-by: {', '.join(reviewers)}")
    parts = [task.spec.title, body, "\n".join(facts), trailer]
    return "\n\n".join(part for part in parts if part) + "\n"


def task_trailer(run_id: str, task_id: str, attempt: int) -> str:
    return f"{TASK_TRAILER}: {run_id}/{task_id}/{attempt}"


class GitIntegrator:
    """`artifacts`: the object store where each integration head is published as a snapshot
    (`RepoRef.bundles`) for workers on other machines; without it they need this disk."""

    def __init__(
        self,
        data_dir: Path,
        suite: RegressionSuite | None = None,
        artifacts: ObjectStore | None = None,
    ) -> None:
        self.root = data_dir / RUNS_DIR
        self.suite = suite
        self.artifacts = artifacts
        self._dry = LedgerIntegrator()
        # git allows one writer per repository: merges of one run take turns
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, run_id: str) -> asyncio.Lock:
        return self._locks.setdefault(run_id, asyncio.Lock())

    def inline(self, run: Run) -> bool:
        return not run.repo.path

    def integration_dir(self, run_id: str) -> Path:
        return self.root / run_id / CLONE_DIR

    async def prepare(self, run: Run) -> RepoRef:
        if not run.repo.path:
            return run.repo
        await asyncio.to_thread(self._prepare, run)
        return await self._published(run)

    def _prepare(self, run: Run) -> None:
        target = self.integration_dir(run.run_id)
        if (target / ".git").exists() and _origin(target) != run.repo.path:
            # A clone left by an earlier run of this id on another repository (its record
            # lost with the NATS store): merging onto it would deliver that repository's code.
            remove_clone(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Changed now, even when the clone is there already: garbage collection leaves a clone
        # of a run not recorded yet alone only while it looks recently changed.
        os.utime(target.parent)
        if not (target / ".git").exists():
            git(target.parent, "clone", "--quiet", "--no-hardlinks", run.repo.path, target.name)
            git(target, "checkout", "--quiet", "-B", result_branch(run.run_id))

    async def _published(self, run: Run) -> RepoRef:
        """Where the run's code is now: its integration head, published as a snapshot (an
        increment on the run's last one; nothing is uploaded when the head is known)."""
        target = self.integration_dir(run.run_id)
        head = (await asyncio.to_thread(git, target, "rev-parse", "HEAD")).strip()
        bundles = None
        if self.artifacts is not None:
            bundles = await publish_snapshot(self.artifacts, target, head, run.repo.bundles)
        return RepoRef(path=run.repo.path, snapshot=str(target), head=head, bundles=bundles)

    async def merge(self, run: Run, task_id: str, attempt: int) -> Merged | MergeFailed | ParkTask:
        if not run.repo.path:
            return await self._dry.merge(run, task_id, attempt)
        repo = self.integration_dir(run.run_id)
        task = run.tasks[task_id]
        patch = await inline(self.artifacts, task.patch) if task.patch else None
        async with self._lock(run.run_id):
            outcome, at_head = await asyncio.to_thread(
                self._merge, run, task_id, attempt, patch.text if patch else ""
            )
            if not isinstance(outcome, Merged):
                return outcome
            failures = None
            if at_head and self.suite:
                failures = await self.suite.failures(repo, run.run_id, task_id, attempt)
            if failures is None:
                return Merged(task_id, attempt, await self._published(run))
            # Nothing lands on top of a commit before its suite passed (the lock), so HEAD~1 is
            # the head it was merged onto.
            await asyncio.to_thread(git, repo, "reset", "--quiet", "--hard", "HEAD~1")
            report = f"the whole test suite failed after merging this change:\n{failures}"
            return MergeFailed(task_id, attempt, FeedbackKind.REGRESSION, report)

    def _merge(
        self, run: Run, task_id: str, attempt: int, patch: str
    ) -> tuple[Merged | MergeFailed, bool]:
        """The outcome, and whether the task's commit is HEAD (its suite has to pass)."""
        repo = self.integration_dir(run.run_id)
        trailer = task_trailer(run.run_id, task_id, attempt)
        found = git(repo, "log", "--format=%H", "--fixed-strings", f"--grep={trailer}").split()
        if found:  # merged before a crash: do not apply twice; check its suite if still on top
            return Merged(task_id, attempt), found[0] == git(repo, "rev-parse", "HEAD").strip()
        task = run.tasks[task_id]
        if patch.strip():
            try:
                git(repo, "apply", "--3way", "--index", "--whitespace=nowarn", stdin=patch)
            except GitError as exc:
                git(repo, "reset", "--quiet", "--hard", "HEAD", check=False)
                conflict = MergeFailed(task_id, attempt, FeedbackKind.CONFLICT, exc.output[-4000:])
                return conflict, False
        git(
            repo,
            "commit",
            "--quiet",
            "--allow-empty",
            "-F",
            "-",
            stdin=commit_message(task, trailer),
        )
        return Merged(task_id, attempt), True

    async def integrate(self, run: Run) -> Integrated:
        if not run.repo.path:
            return await self._dry.integrate(run)
        async with self._lock(run.run_id):
            outcome = await asyncio.to_thread(self._integrate, run)
        self._locks.pop(run.run_id, None)
        return outcome

    def _integrate(self, run: Run) -> Integrated:
        branch = result_branch(run.run_id)
        source = self.integration_dir(run.run_id)
        try:
            git(Path(run.repo.path), "fetch", "--quiet", str(source), f"+HEAD:refs/heads/{branch}")
        except GitError as exc:
            return Integrated(ok=False, report=str(exc))
        merged = sum(task.state is TaskState.MERGED for task in run.tasks.values())
        return Integrated(ok=True, report=f"{merged} tasks on branch {branch} of {run.repo.path}")
