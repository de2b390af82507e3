"""`GitIntegrator`: merges approved patches into a run's integration clone, one commit per
task, and delivers the result as the branch `codeyard/<run_id>` of the user's repository.

The integration clone lives under the data dir; the user's working tree and current branch are
never touched (delivery is a fetch into a new branch, never over an existing one). Merging is
idempotent: each commit carries the task and attempt as a trailer, so a merge repeated after a
coordinator crash finds its commit and does not apply the patch twice. Only the commits made
since the clone was (`BASE_REF`, recorded with it) count, and only by their trailer: the user's
history and the words of the planner and the coder in a message can never make a task look
merged. A clone serves one submission of its run (`SUBMISSION_KEY`, recorded with it): a run id
used again after its record was lost gets a new clone, not the old run's base and merges.

Each commit stays on the head only once the repository's suite passed on it; a failing suite,
or anything else ending the merge before (the sandbox or the object store unavailable, a
cancellation), takes it off again. Taking it off moves HEAD back only while HEAD is still that
commit (compare and swap), never "one commit back".

Every change to a run's clone holds its run's lock file (`FileLock`): a deposed leader still
finishing a merge and its successor share the data dir (docker compose mounts one volume into
both), and git allows one writer per repository. Holding it, a merge first clears what a
coordinator killed in the middle of one left (git's lock files, a half-applied patch). A clone
is made next to its place and renamed there once whole, so an interrupted clone is never taken
for one.

A repository the result branch could not be fetched into (its `.git` not writable by the
coordinator's uid, as with another user's repository mounted into a container; a branch of that
name there already, or one in its way, such as `codeyard`) is refused when the run is prepared,
before any of its work, never found out by the delivery after all of it. A branch of that name
made while the run went on is left as it is: the delivery fails, saying where the result is.

No git command here runs a hook, or any other program a git config names (`git.git`): a hook
run in the clone would run what a task's patch wrote on the host, outside the sandbox.

A run submitted without a repository is a dry run: merges are recorded, nothing is written.

The clone stays after its run ends (a failed or cancelled run's merged tasks are nowhere else)
until garbage collection removes it (`codeyard.workspace.clone_retention`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from pathlib import Path

from nats.js.object_store import ObjectStore

from codeyard.cancellation import finish_in_thread
from codeyard.coordinator.events import Integrated, Merged, MergeFailed, ParkTask
from codeyard.coordinator.integrator import LedgerIntegrator
from codeyard.sandbox.scratch import remove_tree
from codeyard.schemas.model import FeedbackKind, RepoRef, Run, Task, TaskState
from codeyard.terminal_text import terminal_safe
from codeyard.workspace.file_lock import FileLock
from codeyard.workspace.git import GitError, git, git_version
from codeyard.workspace.integration_clones import CLONE_DIR
from codeyard.workspace.patch_store import inline
from codeyard.workspace.regression import RegressionSuite
from codeyard.workspace.snapshots import publish_snapshot

log = logging.getLogger(__name__)

# The trailer of each task's commit on the result branch; `rollback` finds tasks by it.
TASK_TRAILER = "Codeyard-Task"
# `<data dir>/runs/<run_id>/integration` (CLONE_DIR): each run's directory holds its clone.
RUNS_DIR = "runs"
# In the clone: the commit it was made at. Commits before it are the user's, never a merge.
BASE_REF = "refs/codeyard/base"
# In the clone's git config: the submission (`Run.submission`) it was made for. A run id used
# again after its record was lost is another submission, whose merges the old clone's are not.
SUBMISSION_KEY = "codeyard.submission"
# In the run's directory, next to the clone: held by whoever changes the clone.
LOCK_FILE = f"{CLONE_DIR}.lock"
# In the run's directory: the run id it was made for, as spelled. On a file system that does
# not tell case apart (macOS's, Windows'), runs `Fix` and `fix` would share one directory.
OWNER_FILE = "run-id"
# A clone being made, or being thrown away, in the run's directory; one still there when the
# run's lock is taken was left by an interrupted process.
PARTIAL_SUFFIX = ".partial"
# git may finish a commit by packing the repository in a detached background process, which
# would outlive the run's lock and take lock files a later merge removes as stale.
_NO_DETACHED_GC = ("-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false")
# A line git would take for a task trailer (keys are case-insensitive, space may precede ':').
_TASK_TRAILER_LINE = re.compile(rf"\s*{TASK_TRAILER}\s*:", re.IGNORECASE)
_FIELD = "\x1f"
_RECORD = "\x1e"


def _origin(clone: Path) -> str:
    try:
        return git(clone, "config", "--get", "remote.origin.url").strip()
    except GitError:  # no origin at all
        return ""


def result_branch(run_id: str) -> str:
    return f"codeyard/{run_id}"


def commit_message(task: Task, trailer: str) -> str:
    """Title; the coder's summary (else the task's description); tests and reviews; trailer.

    The title, summary and description are the planner's and the coder's words: a line of theirs
    that reads as a task trailer is left out, so that only `trailer` names a task. A NUL in any
    piece stands as U+FFFD."""
    body = _without_task_trailers(_committable(task.summary or task.spec.description))
    facts = []
    if task.tests_run:
        facts.append(f"Tests: {task.tests_run} run, passing")
    reviewers = sorted(_committable(name) for name, ok in task.approvals.items() if ok)
    if reviewers:
        facts.append(f"Reviewed-by: {', '.join(reviewers)}")
    # Never an empty title: git reads no trailers in a message's first paragraph.
    title = _without_task_trailers(_committable(task.spec.title)) or _committable(task.spec.id)
    parts = [title, body, "\n".join(facts), _committable(trailer)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _committable(text: str) -> str:
    """`text` as git takes it in a commit message: `git commit` refuses a message with a NUL,
    which would fail every merge of the task, however often it is retried. Other control
    characters are shown as escapes: `git log` passes them to the terminal."""
    text = text.replace("\0", "\ufffd").replace("\r\n", "\n")  # (a CR of CRLF is no escape)
    return terminal_safe(text, lines=True)


def _without_task_trailers(text: str) -> str:
    lines = text.strip().splitlines()
    return "\n".join(line for line in lines if not _TASK_TRAILER_LINE.match(line)).strip()


def task_key(run_id: str, task_id: str, attempt: int) -> str:
    """The value of a task's trailer."""
    return f"{run_id}/{task_id}/{attempt}"


def task_trailer(run_id: str, task_id: str, attempt: int) -> str:
    return f"{TASK_TRAILER}: {task_key(run_id, task_id, attempt)}"


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
        self._locks: dict[str, FileLock] = {}

    def _lock(self, run_id: str) -> FileLock:
        """The run's lock: among this process's merges and every process sharing the data dir.
        Git work under it runs to its end even when cancelled (`finish_in_thread`): the lock
        must not pass on while a git command of ours still writes."""
        if run_id not in self._locks:
            self._locks[run_id] = FileLock(self.root / run_id / LOCK_FILE)
        return self._locks[run_id]

    def inline(self, run: Run) -> bool:
        return not run.repo.path

    def integration_dir(self, run_id: str) -> Path:
        return self.root / run_id / CLONE_DIR

    async def prepare(self, run: Run) -> RepoRef:
        if not run.repo.path:
            return run.repo
        run_dir = self.root / run.run_id
        fresh = not run_dir.exists()
        try:
            async with self._lock(run.run_id):
                await finish_in_thread(self._prepare, run)
                return await self._published(run)
        except BaseException:
            if fresh:
                # The submission is refused (not a repository, no commit yet) or fails: a
                # directory left would hold nothing but its lock, which garbage collection
                # counts as a run's until its retention ends.
                self._locks.pop(run.run_id, None)
                await asyncio.shield(asyncio.to_thread(remove_tree, run_dir))
            raise

    def _prepare(self, run: Run) -> None:
        _check_deliverable(Path(run.repo.path), result_branch(run.run_id))
        target = self.integration_dir(run.run_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        _claim(target.parent, run.run_id)
        # Changed now, even when the clone is there already: garbage collection leaves a clone
        # of a run not recorded yet alone only while it looks recently changed.
        os.utime(target.parent)
        _remove_partial(target.parent)
        if target.exists() and not _is_clone_of(target, run.repo.path, run.submission):
            # A clone left by an earlier run of this id (its record lost with the NATS store):
            # merging onto it would deliver another repository's code, or, on the same one, the
            # old base and the old run's commits, which its trailers would pass off as this
            # run's merges. Or not a whole clone at all (an older codeyard cloned in place).
            _discard(target)
        if not target.exists():
            _clone(run.repo.path, target, result_branch(run.run_id), run.submission)

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
        task = run.tasks[task_id]
        patch = await inline(self.artifacts, task.patch) if task.patch else None
        changes = [patch.text if patch else "", task.tests.text if task.tests else ""]
        async with self._lock(run.run_id):
            outcome, commit = await self._merge_in_thread(run, task_id, attempt, changes)
            if not isinstance(outcome, Merged):
                return outcome
            if commit is None:  # merged before, under later merges whose suites passed on it
                return await self._found(run, outcome)
            return await self._verified(run, outcome, commit)

    async def _merge_in_thread(
        self, run: Run, task_id: str, attempt: int, patches: list[str]
    ) -> tuple[Merged | MergeFailed, str | None]:
        """`_merge` in a thread. Cancelled meanwhile (the leadership lost, a shutdown), the
        commit it made is taken off the head again once it has returned, as `_verified` does:
        no suite passed on it."""
        made: list[str] = []

        def merge() -> tuple[Merged | MergeFailed, str | None]:
            outcome, commit = self._merge(run, task_id, attempt, patches)
            if commit is not None:
                made.append(commit)
            return outcome, commit

        try:
            return await finish_in_thread(merge)
        except asyncio.CancelledError:
            if made:
                try:
                    await finish_in_thread(_undo, self.integration_dir(run.run_id), made[0])
                except Exception:  # the cancellation goes on all the same
                    log.exception("run %s: cannot take cancelled merge %s off", run.run_id, made)
            raise

    async def _found(self, run: Run, merged: Merged) -> Merged:
        """`merged`, whose commit a replay found under later merges: it is on the branch for
        good (the later merges' suites passed on it), whatever happens now. The head is
        published if the object store allows; if not, the merge stands all the same, the head
        to be published with the next merge: a failure here would send the task back to its
        coder, whose next attempt would be merged on top of its commit."""
        try:
            return Merged(merged.task_id, merged.attempt, await self._published(run))
        except Exception as exc:
            log.warning(
                "run %s: task %s is merged, but its head could not be published: %s",
                run.run_id,
                merged.task_id,
                exc,
            )
            return merged

    async def _verified(self, run: Run, merged: Merged, commit: str) -> Merged | MergeFailed:
        """`merged` once the suite passed on `commit` (HEAD) and the head is published; else
        `commit` is taken off the head again. So is it when anything else ends this first (the
        sandbox or the object store unavailable, a cancellation): a retry then applies the
        patch afresh rather than finding an unverified commit, and no unverified commit stays
        on the branch when the task finally fails."""
        repo = self.integration_dir(run.run_id)
        task_id, attempt = merged.task_id, merged.attempt
        try:
            failures = None
            if self.suite:
                failures = await self.suite.failures(
                    repo, run.run_id, task_id, attempt, test_command=run.test_command
                )
            if failures is None:
                return Merged(task_id, attempt, await self._published(run))
        except BaseException:
            await finish_in_thread(_undo, repo, commit)
            raise
        await finish_in_thread(_undo, repo, commit)
        report = f"the whole test suite failed after merging this change:\n{failures}"
        return MergeFailed(task_id, attempt, FeedbackKind.REGRESSION, report)

    def _merge(
        self, run: Run, task_id: str, attempt: int, patches: list[str]
    ) -> tuple[Merged | MergeFailed, str | None]:
        """The outcome, and the task's commit when it is HEAD (its suite has to pass). The
        `patches` (the coder's, then the tester's tests on top of it) make one commit."""
        repo = self.integration_dir(run.run_id)
        _clear_leftovers(repo)
        head = _commit(repo, "HEAD")
        found = _commits_of(repo, task_key(run.run_id, task_id, attempt))
        if found:  # merged before a crash: do not apply twice; check its suite if still on top
            return Merged(task_id, attempt), head if found[0] == head else None
        task = run.tasks[task_id]
        for patch in filter(str.strip, patches):
            try:
                git(repo, "apply", "--3way", "--index", "--whitespace=nowarn", stdin=patch)
            except GitError as exc:
                git(repo, "reset", "--quiet", "--hard", "HEAD", check=False)
                conflict = MergeFailed(task_id, attempt, FeedbackKind.CONFLICT, exc.output[-4000:])
                return conflict, None
        trailer = task_trailer(run.run_id, task_id, attempt)
        message = commit_message(task, trailer)
        git(
            repo,
            *_NO_DETACHED_GC,
            *("commit", "--quiet", "--no-verify", "--allow-empty", "-F", "-"),
            stdin=message,
        )
        return Merged(task_id, attempt), _commit(repo, "HEAD")

    async def integrate(self, run: Run) -> Integrated:
        if not run.repo.path:
            return await self._dry.integrate(run)
        async with self._lock(run.run_id):
            outcome = await finish_in_thread(self._integrate, run)
        self._locks.pop(run.run_id, None)
        return outcome

    def _integrate(self, run: Run) -> Integrated:
        """The clone's head fetched into the user's repository as the new branch `branch`,
        never over anything: a branch of that name made since the run was prepared is left as
        it is, unless it holds nothing but a part of the run's history (then it moves on to its
        head, losing nothing). Delivering again what was delivered (a replay after a crash)
        succeeds, even once the user built on the branch.

        Any other git failure raises `GitError`: it may pass (another git process holding a
        lock of the repository a moment), and the coordinator tries again before it fails the
        run with it."""
        branch = result_branch(run.run_id)
        source = self.integration_dir(run.run_id)
        repo = Path(run.repo.path)
        merged = sum(task.state is TaskState.MERGED for task in run.tasks.values())
        delivered = Integrated(ok=True, report=f"{merged} tasks on branch {branch} of {repo}")
        head = _commit(source, "HEAD")
        if _holds(repo, branch, head):
            return delivered
        try:
            git(repo, *delivery_fetch(source, branch))
        except GitError:
            if _has_branch(repo, branch):  # made since, with commits that are not the run's
                return Integrated(ok=False, report=_taken_at_delivery(repo, branch, source, head))
            raise
        return delivered


def delivery_fetch(source: Path, branch: str) -> tuple[str, ...]:
    """The arguments of the `git fetch` delivering `source`'s head into a repository as
    `branch`. Not forced: git refuses to move an existing branch but forward. It writes only the
    branch: no tags, no FETCH_HEAD (from git 2.29 on; `_fetch_writes`), no submodule fetched
    from its remote because a task moved it."""
    options = ["--quiet", "--no-tags", "--no-recurse-submodules"]
    if _fetch_head_optional():
        options.append("--no-write-fetch-head")
    return ("fetch", *options, str(source), f"HEAD:refs/heads/{branch}")


def _fetch_head_optional() -> bool:
    """Whether `git fetch` has `--no-write-fetch-head` (git 2.29)."""
    return git_version() >= (2, 29)


def _has_branch(repo: Path, branch: str) -> bool:
    ref = f"refs/heads/{branch}"
    return bool(git(repo, "rev-parse", "--verify", "--quiet", ref, check=False).strip())


def _holds(repo: Path, branch: str, commit: str) -> bool:
    """Whether `branch` of `repo` exists and has `commit` in its history."""
    if not _has_branch(repo, branch):
        return False
    ancestry = ("merge-base", "--is-ancestor", commit, f"refs/heads/{branch}")
    try:
        git(repo, *ancestry)
    except GitError:  # not an ancestor, or `repo` does not have `commit` at all
        return False
    return True


def _taken_at_delivery(repo: Path, branch: str, source: Path, head: str) -> str:
    return (
        f"the branch {branch} of {repo} was made or moved since the run started, and does not "
        f"hold the run's result: codeyard never overwrites a branch, so it was left as it is. "
        f"The result is commit {head} of {source}: `git -C {repo} fetch {source} "
        f"{head}:refs/heads/ANOTHER-NAME` makes it a branch of another name"
    )


class RepositoryNotWritable(Exception):
    """The result branch could not be fetched into the user's repository by this process."""


class RunIdTaken(Exception):
    """The run's directory in the data dir belongs to a run whose id differs only in case: the
    file system does not tell them apart, and preparing this run would discard the other's
    clone."""


def _claim(run_dir: Path, run_id: str) -> None:
    """Mark `run_dir` as `run_id`'s, or raise `RunIdTaken` if another run id has it."""
    owner = run_dir / OWNER_FILE
    try:
        other = owner.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        other = ""
    if other and other != run_id:
        raise RunIdTaken(
            f"run id {run_id!r} and the run {other!r} share the directory {run_dir}: the file "
            "system of the data dir does not tell upper and lower case apart; choose another "
            "run id"
        )
    if not other:  # (a directory of an older codeyard has none: it is this run's by its name)
        written = owner.with_name(f"{OWNER_FILE}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
        written.write_text(run_id + "\n", encoding="utf-8")
        os.replace(written, owner)  # whole or not at all


class ResultBranchTaken(RepositoryNotWritable):
    """The result branch exists in the user's repository already (a run of the same id left it,
    or the user made it), or another branch keeps git from making it: the delivery would have to
    overwrite it, which it never does."""


def _check_deliverable(repo: Path, branch: str) -> None:
    """Refuse a repository the delivery (`GitIntegrator._integrate`) could not fetch `branch`
    into: one that has `branch` already, or a branch in its way (`ResultBranchTaken`); one where
    this process's uid cannot write every place the fetch may write (`_fetch_writes`, checked
    by the kernel, `os.access`: mode bits, ACLs, a read-only mount; `RepositoryNotWritable`)."""
    _check_branch_free(repo, branch)
    blocked: list[Path] = []
    for place in _fetch_writes(repo, branch):
        blocker = _unwritable(place)
        if blocker is not None and blocker not in blocked:
            blocked.append(blocker)
    if not blocked:
        return
    named = ", ".join(map(str, blocked[:3]))
    if len(blocked) > 3:
        named += f" and {len(blocked) - 3} more places"
    verb = "is" if len(blocked) == 1 else "are"
    git_dir = _git_path(repo, "--git-common-dir")
    uid = os.getuid()
    raise RepositoryNotWritable(
        f"{named} {verb} not writable by uid {uid}: codeyard writes the result branch {branch} "
        f"into {git_dir} when the run ends; make {git_dir} writable by uid {uid}, including "
        "what is created in it later (deploy/README.md gives the setfacl line)"
    )


def _check_branch_free(repo: Path, branch: str) -> None:
    """Refuse (`ResultBranchTaken`) a repository that has the branch `branch`, or one that
    keeps git from making it: a ref's name is a file path, so neither a branch named as a
    directory of it (`codeyard` for `codeyard/r1`) nor a branch under it (`codeyard/r1/x`) may
    be there. Found now, not by the delivery after all of the run's work."""
    ref = f"refs/heads/{branch}"
    parts = ref.split("/")
    above = {"/".join(parts[:end]) for end in range(3, len(parts))}
    # a pattern matches the ref named and every ref under it
    listing = git(repo, "for-each-ref", "--format=%(refname)", *sorted(above), ref)
    found = listing.split()
    if ref in found:
        where = _checked_out(repo, ref)
        raise ResultBranchTaken(
            f"{repo} has a branch {branch} already, and codeyard delivers a run as a new branch "
            f"of that name, never over an existing one: delete it (git -C {repo} branch -D "
            f"{branch}){where}, or choose another run id (--run-id)"
        )
    for other in found:
        name = other.removeprefix("refs/heads/")
        if other in above:
            raise ResultBranchTaken(
                f"{repo} has a branch {name}, which keeps git from making the branch {branch} "
                f"a run delivers into (a branch cannot be both a name and a directory of "
                f"names): rename it (git -C {repo} branch -m {name} NEW-NAME)"
            )
        if other.startswith(f"{ref}/"):
            raise ResultBranchTaken(
                f"{repo} has a branch {name}, which keeps git from making the branch {branch} "
                f"a run delivers into (a branch cannot be both a name and a directory of "
                f"names): choose another run id (--run-id), or rename {name}"
            )


def _checked_out(repo: Path, ref: str) -> str:
    """Where `ref` is checked out, as words to add to a refusal ("" when nowhere): git deletes
    no branch a worktree has checked out."""
    listing = git(repo, "worktree", "list", "--porcelain", check=False)
    worktree = ""
    for line in listing.splitlines():
        if line.startswith("worktree "):
            worktree = line.removeprefix("worktree ")
        elif line == f"branch {ref}":
            return f" once the worktree {worktree} has another branch checked out"
    return ""


def _fetch_writes(repo: Path, branch: str) -> list[Path]:
    """Where fetching `branch` into `repo` may write (seen with strace, git 2.39): FETCH_HEAD
    when git cannot leave it (`delivery_fetch`; truncated, so an existing one must be writable;
    one per worktree), new objects either loose in `objects/XX/` (new `XX` directories in
    `objects`, as is `maintenance.lock`) or,
    from 100 objects on (`fetch.unpackLimit`), as a pack in `objects/pack`: which one depends
    on the run's commits, so all of them; the ref's lock file, renamed to the ref, and its
    reflog. Each path as git resolves it: a linked worktree's, or a `.git` file's, are
    elsewhere."""
    ref = f"refs/heads/{branch}"
    objects = _git_path(repo, "--git-path", "objects")
    places = [objects, objects / "pack"]
    if not _fetch_head_optional():
        places.insert(0, _git_path(repo, "--git-path", "FETCH_HEAD"))
    places += sorted(found for found in objects.glob("[0-9a-f][0-9a-f]") if found.is_dir())
    if git(repo, "config", "--get", "extensions.refStorage", check=False).strip() == "reftable":
        # A ref update writes a new table and replaces tables.list, both in this directory.
        places.append(_git_path(repo, "--git-path", "reftable"))
    else:
        places.append(_git_path(repo, "--git-path", f"{ref}.lock"))
        if _logs_ref_updates(repo):
            places.append(_git_path(repo, "--git-path", f"logs/{ref}"))
    return places


def _git_path(repo: Path, *option: str) -> Path:
    """A path `git rev-parse` tells (one option), absolute; one line, though it may hold more."""
    told = git(repo, "rev-parse", "--path-format=absolute", *option)
    return Path(told.removesuffix("\n"))


def _logs_ref_updates(repo: Path) -> bool:
    """Whether git writes a reflog for a branch it updates (`core.logAllRefUpdates`; unset, in
    a repository with a working tree only): else an unwritable `logs` is no obstacle."""
    key = "core.logAllRefUpdates"
    value = git(repo, "config", "--type=bool", "--get", key, check=False).strip()
    if value in ("true", "false"):
        return value == "true"
    if git(repo, "config", "--get", key, check=False).strip():  # "always", no boolean
        return True
    return git(repo, "rev-parse", "--is-bare-repository").strip() == "false"


def _unwritable(place: Path) -> Path | None:
    """What keeps this process from writing `place`, or None: the file or directory itself
    where it exists, else the nearest directory above it, where git would create it (and the
    directories on the way). `os.access` asks the kernel, with the real uid, which is the one
    the fetch runs as."""
    while not os.path.lexists(place):  # also when a directory above cannot be searched
        place = place.parent
    mode = os.W_OK | os.X_OK if place.is_dir() else os.W_OK
    return None if os.access(place, mode) else place


def _commit(repo: Path, rev: str) -> str:
    return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()


def _clone(source: str, target: Path, branch: str, submission: str) -> None:
    """`target` a whole clone of `source` on `branch`, its start and `submission` recorded, or
    not there at all.

    git leaves a clone it could not finish in place (a checkout cut short by a timeout or a
    crash: origin set, files missing, a stale index.lock), which would pass for a whole one. So
    the clone is made next to `target` and renamed into place once complete."""
    partial = target.with_name(f"{target.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
    try:
        git(target.parent, "clone", "--quiet", "--no-hardlinks", source, partial.name)
        git(partial, "checkout", "--quiet", "-B", branch)
        git(partial, "update-ref", BASE_REF, "HEAD")
        if submission:  # runs of older versions have none, as their clones have no record
            git(partial, "config", SUBMISSION_KEY, submission)
        partial.rename(target)
    except BaseException:
        remove_tree(partial)
        raise


def _is_clone_of(clone: Path, source: str, submission: str) -> bool:
    """Whether `clone` is a whole clone of `source` made for `submission`. A clone made by an
    older codeyard records none, and is kept, as before, only for a run without one (stored by
    an older version): a run id submitted again after that never takes it for its own."""
    if not (clone / ".git").is_dir() or _origin(clone) != source:
        return False
    recorded = git(clone, "config", "--local", "--get", SUBMISSION_KEY, check=False).strip()
    if recorded != submission:
        return False
    try:
        _base(clone)
    except GitError:  # not even what it cloned is known: never a whole clone
        return False
    return True


def _base(clone: Path) -> str:
    """The commit the clone was made at. A clone made before codeyard recorded it was made at
    the remote head it cloned (`origin/HEAD`, never fetched since): recorded now."""
    try:
        return _commit(clone, BASE_REF)
    except GitError:
        started = _commit(clone, "refs/remotes/origin/HEAD")
        git(clone, "update-ref", BASE_REF, started, "")  # "": only if still not recorded
        return started


def _commits_of(clone: Path, key: str) -> list[str]:
    """The commits since the clone was made whose task trailer is exactly `key`, newest first.
    Trailers are read as git parses them (the message's last paragraph), never searched for in
    the whole text, where the coder's summary could name any task."""
    log = git(
        clone,
        "log",
        f"--format=%H{_FIELD}%(trailers:key={TASK_TRAILER},valueonly){_RECORD}",
        f"{_base(clone)}..HEAD",
        "--",
    )
    found = []
    for record in filter(str.strip, log.split(_RECORD)):
        sha, _, values = record.strip("\n").partition(_FIELD)
        if key in (value.strip() for value in values.splitlines()):
            found.append(sha)
    return found


def _clear_leftovers(clone: Path) -> None:
    """Undo what a coordinator killed in the middle of a merge left in the clone: git's lock
    files (each would fail every later command), a half-applied patch, a half-done undo.
    Called under the run's lock only: then no live git process of anyone's uses the clone."""
    dot_git = clone / ".git"
    for lock in (*dot_git.glob("*.lock"), *dot_git.glob("refs/**/*.lock")):
        lock.unlink(missing_ok=True)
    git(clone, "reset", "--quiet", "--hard", "HEAD")
    # Files a patch created before the kill, untracked (ignored ones too): they would make
    # applying it again fail as if it conflicted.
    git(clone, "clean", "-ffdxq")


def _undo(clone: Path, commit: str) -> bool:
    """Take `commit` off the clone's head, only while HEAD is still `commit` (compare and swap):
    undoing a merge twice, or after the head moved on, never drops anything else. Whether it
    did."""
    parent = _commit(clone, f"{commit}^")
    try:
        git(clone, "update-ref", "-m", "codeyard: undo a merge", "HEAD", parent, commit)
    except GitError as exc:
        log.warning("%s: HEAD is no longer %s, left as it is: %s", clone, commit, exc)
        return False
    git(clone, "reset", "--quiet", "--hard", "HEAD")
    return True


def _remove_partial(run_dir: Path) -> None:
    """Remove what interrupted clones and removals left; under the run's lock, nobody is
    making one now."""
    for leftover in run_dir.glob(f"{CLONE_DIR}.*{PARTIAL_SUFFIX}"):
        remove_tree(leftover)


def _discard(clone: Path) -> None:
    """Remove `clone`, renamed away first: a crash part-way leaves a partial clone to remove,
    never half a clone in its place."""
    doomed = clone.with_name(f"{clone.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
    clone.rename(doomed)
    remove_tree(doomed)
