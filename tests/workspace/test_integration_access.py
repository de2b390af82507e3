"""A repository whose `.git` the coordinator's uid cannot write is refused when its run is
prepared, not found out when the result branch is fetched into it, after all the run's work.

The tests run as root, for whom every permission check passes; so each case runs as another uid
(`NOBODY`), in a child process that starts as root, imports codeyard (the interpreter and its
packages may be where only root can read, such as /root/.pyenv) and then drops root's
privileges for good before it touches a repository. Each refusal is checked against git itself:
as `NOBODY`, the fetch that delivers a run fails on that repository.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from codeyard.schemas import Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.testing.scripted_worker import new_file_patch
from codeyard.workspace.git import GitError, git, git_version
from codeyard.workspace.integration import GitIntegrator, delivery_fetch, result_branch
from tests.repositories import one_commit_repo, write_files

# The uid the code runs as: any but root's, whose permission checks always pass; it need not
# have an account.
NOBODY = 65534
RUN_ID = "r1"
BRANCH = result_branch(RUN_ID)
# Whether the delivery writes FETCH_HEAD: only with a git without --no-write-fetch-head.
WRITES_FETCH_HEAD = git_version() < (2, 29)
# A task adding notes.md, whose merge the deliveries carry.
NOTES_PATCH = new_file_patch("notes.md", "notes")
# The kernel's ACL attributes (linux/posix_acl_xattr.h): one version, then (tag, permissions, id)s.
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
# Modules the child would import only on first use (asyncio's thread pool, where git runs),
# after it became `NOBODY`, who may not be able to read them.
_LAZY_IMPORTS = ("concurrent.futures.thread",)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="running as another uid takes root (on Linux)",
)


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory `NOBODY` can reach (pytest's tmp_path is root's alone), with files made in
    it readable by `NOBODY`, as a repository is by the containers' uid.

    git trusts every repository, as the image tells it to (deploy/Dockerfile): else it refuses
    one another uid owns ("dubious ownership"), `NOBODY` root's before any permission matters,
    and root the repositories given to `NOBODY`. In a global config, not GIT_CONFIG_COUNT,
    which git does not pass on to the `upload-pack` of a local clone or fetch. The child
    inherits it."""
    umask = os.umask(0o022)
    base = Path(tempfile.mkdtemp(prefix="codeyard-access-"))
    base.chmod(0o755)
    trust = base / "gitconfig"
    trust.write_text("[safe]\n\tdirectory = *\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(trust))
    try:
        yield base
    finally:
        os.umask(umask)
        shutil.rmtree(base)


@dataclass(frozen=True)
class Attempt:
    """What became of a run prepared and delivered as `NOBODY`."""

    refused: str  # why `prepare` refused the repository, else ""
    fetch_failure: str  # when refused: why git's own fetch failed as `NOBODY`, else ""
    delivered: str  # else: the delivery's report, "" when it failed
    cloned: bool  # whether the run's integration clone was made


def attempt(scratch: Path, repo: Path, fetch_from: Path | None = None) -> Attempt:
    """Prepare a run of `repo` as `NOBODY`; refused: fetch `fetch_from` into `repo` as the
    delivery does, else merge one task and deliver the run."""
    home, data = scratch / "home", scratch / "data"
    for place in (home, data):
        place.mkdir(exist_ok=True)
        os.chown(place, NOBODY, NOBODY)
    request = {
        "home": str(home),
        "data": str(data),
        "repo": str(repo),
        "fetch_from": str(fetch_from or ""),
    }
    child = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(request)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    return Attempt(**json.loads(child.stdout))


def _as_nobody(request: str) -> None:
    """The child: from here on `NOBODY`, with no way back."""
    asked = json.loads(request)
    os.chdir(asked["home"])
    os.environ["HOME"] = asked["home"]  # root's is not `NOBODY`'s to read
    for lazy in _LAZY_IMPORTS:
        importlib.import_module(lazy)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    attempted = asyncio.run(
        _prepare_and_deliver(Path(asked["data"]), Path(asked["repo"]), asked["fetch_from"])
    )
    print(json.dumps(attempted.__dict__))


async def _prepare_and_deliver(data: Path, repo: Path, fetch_from: str) -> Attempt:
    task = Task(spec=TaskSpec(id="a", title="add notes"), patch=Patch(text=NOTES_PATCH))
    run = Run(run_id=RUN_ID, goal="g", repo=RepoRef(path=str(repo)), tasks={"a": task})
    integrator = GitIntegrator(data)
    try:
        run.repo = await integrator.prepare(run)
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
        cloned = integrator.integration_dir(RUN_ID).exists()
        return Attempt(refused, _fetch_failure(repo, fetch_from), "", cloned)
    await integrator.merge(run, "a", 1)
    task.state = TaskState.MERGED
    delivered = await integrator.integrate(run)
    return Attempt("", "", delivered.report if delivered.ok else "", True)


def _fetch_failure(repo: Path, source: str) -> str:
    """Why the delivery's fetch (`GitIntegrator._integrate`) of `source` into `repo` failed."""
    try:
        git(repo, *delivery_fetch(Path(source), BRANCH))
    except GitError as exc:
        return str(exc)
    return ""


def named_places(refusal: str) -> list[str]:
    """The first places a refusal names as not writable."""
    named = re.split(r" (?:is|are) not writable", refusal.removeprefix("RepositoryNotWritable: "))
    return re.sub(r" and \d+ more places$", "", named[0]).split(", ")


def give(path: Path) -> None:
    """`path` and everything in it `NOBODY`'s."""
    for place in (path, *path.rglob("*")):
        os.lchown(place, NOBODY, NOBODY)


def keep(path: Path) -> None:
    """`path` alone root's (mode 755 or 644: readable, not writable, by `NOBODY`)."""
    os.lchown(path, 0, 0)


def user_repo(scratch: Path) -> Path:
    return one_commit_repo(scratch / "user", {"app.py": "print('hello')\n"})


def result_of(scratch: Path, repo: Path, files: int = 1) -> tuple[Path, str]:
    """A clone of `repo` with one commit adding `files` files, as a run's integration clone
    would be, and that commit."""
    clone = scratch / "result"
    git(scratch, "clone", "--quiet", str(repo), str(clone))
    write_files(clone, {f"new/{n}.txt": f"{n}\n" for n in range(files)})
    git(clone, "add", "-A")
    git(clone, "commit", "--quiet", "-m", "the run's work")
    return clone, git(clone, "rev-parse", "HEAD").strip()


def grant(root: Path, uid: int) -> None:
    """What deploy/README.md's `setfacl -R -m u:UID:rwX,d:u:UID:rwX,d:u:"$(id -u)":rwX .git`
    does, written as the kernel's ACL attributes: no `acl` package needed."""
    for place in (root, *root.rglob("*")):
        if place.is_symlink():
            continue
        mode = place.stat().st_mode
        owner, group, other = mode >> 6 & 7, mode >> 3 & 7, mode & 7
        rw_x = 7 if place.is_dir() or mode & 0o111 else 6
        access = _acl(owner, {uid: rw_x}, group, other)
        try:
            os.setxattr(place, "system.posix_acl_access", access)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                pytest.skip(f"the file system of {root} has no POSIX ACLs")
            raise
        if place.is_dir():
            default = _acl(owner, {uid: 7, os.getuid(): 7}, group, other)
            os.setxattr(place, "system.posix_acl_default", default)


def _acl(owner: int, users: dict[int, int], group: int, other: int) -> bytes:
    mask = group
    for permissions in users.values():
        mask |= permissions
    entries = [
        (_ACL_USER_OBJ, owner, _ACL_NO_ID),
        *((_ACL_USER, permissions, uid) for uid, permissions in sorted(users.items())),
        (_ACL_GROUP_OBJ, group, _ACL_NO_ID),
        (_ACL_MASK, mask, _ACL_NO_ID),
        (_ACL_OTHER, other, _ACL_NO_ID),
    ]
    packed = (struct.pack("<HHI", *entry) for entry in entries)
    return struct.pack("<I", _ACL_VERSION) + b"".join(packed)


@dataclass(frozen=True)
class Unwritable:
    """A repository (`repo`) with one place the delivery writes root's (`blocker`), and what
    the run would deliver into it (`result`)."""

    repo: Path
    blocker: Path
    result: Path


def _a_git_dir_of_another_user(scratch: Path) -> Unwritable:
    repo = user_repo(scratch)  # all root's: the docker compose case
    return Unwritable(repo, repo / ".git" / "objects", result_of(scratch, repo)[0])


def _repo_with_a_fetch_head_left_by_the_users_own_fetch(scratch: Path) -> Path:
    repo = user_repo(scratch)
    git(repo, "fetch", "--quiet", str(repo), "main")
    give(repo)
    keep(repo / ".git" / "FETCH_HEAD")
    return repo


def _fetch_head_left_by_the_users_own_fetch(scratch: Path) -> Unwritable:
    repo = _repo_with_a_fetch_head_left_by_the_users_own_fetch(scratch)
    return Unwritable(repo, repo / ".git" / "FETCH_HEAD", result_of(scratch, repo)[0])


def _branches(scratch: Path) -> Unwritable:
    repo = user_repo(scratch)
    give(repo)
    keep(repo / ".git" / "refs" / "heads")
    return Unwritable(repo, repo / ".git" / "refs" / "heads", result_of(scratch, repo)[0])


def _reflogs(scratch: Path) -> Unwritable:
    repo = user_repo(scratch)
    give(repo)
    keep(repo / ".git" / "logs" / "refs" / "heads")
    blocker = repo / ".git" / "logs" / "refs" / "heads"
    return Unwritable(repo, blocker, result_of(scratch, repo)[0])


def _packs_of_a_large_result(scratch: Path) -> Unwritable:
    repo = user_repo(scratch)
    give(repo)
    keep(repo / ".git" / "objects" / "pack")
    # From 100 objects on (fetch.unpackLimit) git keeps what it fetched as a pack.
    result = result_of(scratch, repo, files=150)[0]
    return Unwritable(repo, repo / ".git" / "objects" / "pack", result)


def _an_object_directory_the_user_made(scratch: Path) -> Unwritable:
    repo = user_repo(scratch)
    give(repo)
    result, commit = result_of(scratch, repo)
    # Where the result's commit goes, made by the user after the repository was made writable.
    directory = repo / ".git" / "objects" / commit[:2]
    directory.mkdir(exist_ok=True)
    keep(directory)
    return Unwritable(repo, directory, result)


def _a_linked_worktree(scratch: Path) -> Unwritable:
    main = user_repo(scratch)
    worktree = scratch / "worktree"
    git(main, "worktree", "add", "--quiet", "-b", "feature", str(worktree))
    # The worktree and its own git dir (its FETCH_HEAD) are writable; the shared one is not.
    give(worktree)
    give(main / ".git" / "worktrees" / "worktree")
    return Unwritable(worktree, main / ".git" / "objects", result_of(scratch, worktree)[0])


def _a_git_file_pointing_elsewhere(scratch: Path) -> Unwritable:
    repo, git_dir = scratch / "user", scratch / "elsewhere.git"
    git(scratch, "init", "--quiet", "-b", "main", f"--separate-git-dir={git_dir}", str(repo))
    one_commit_repo(repo, {"app.py": "print('hello')\n"})
    give(repo)  # the working tree and its `.git` file, not the git dir
    return Unwritable(repo, git_dir / "objects", result_of(scratch, repo)[0])


@pytest.mark.parametrize(
    "unwritable",
    [
        _a_git_dir_of_another_user,
        *([_fetch_head_left_by_the_users_own_fetch] if WRITES_FETCH_HEAD else []),
        _branches,
        _reflogs,
        _packs_of_a_large_result,
        _an_object_directory_the_user_made,
        _a_linked_worktree,
        _a_git_file_pointing_elsewhere,
    ],
)
def test_a_repository_the_delivery_could_not_write_is_refused_before_any_work(
    scratch: Path, unwritable: Callable[[Path], Unwritable]
) -> None:
    case = unwritable(scratch)

    attempted = attempt(scratch, case.repo, fetch_from=case.result)

    assert attempted.refused.startswith("RepositoryNotWritable: "), attempted
    assert str(case.blocker) in named_places(attempted.refused), attempted.refused
    assert f"not writable by uid {NOBODY}" in attempted.refused
    assert f"the result branch {BRANCH}" in attempted.refused
    assert "(deploy/README.md gives the setfacl line)" in attempted.refused
    assert not attempted.cloned
    # what the check foresaw: git's own fetch of a run's result fails there
    assert attempted.fetch_failure.startswith("git fetch"), attempted


def _owned_by_the_coordinators_uid(scratch: Path) -> Path:
    repo = user_repo(scratch)
    give(repo)
    return repo


def _shared_by_the_readmes_acl(scratch: Path) -> Path:
    repo = user_repo(scratch)  # root's, and stays so
    grant(repo / ".git", NOBODY)
    return repo


def _reflogs_off(scratch: Path) -> Path:
    repo = user_repo(scratch)
    git(repo, "config", "core.logAllRefUpdates", "false")
    give(repo)
    keep(repo / ".git" / "logs" / "refs" / "heads")  # never written: no obstacle
    return repo


def _a_fetch_head_never_written(scratch: Path) -> Path:
    return _repo_with_a_fetch_head_left_by_the_users_own_fetch(scratch)


@pytest.mark.parametrize(
    "writable",
    [
        _owned_by_the_coordinators_uid,
        _shared_by_the_readmes_acl,
        _reflogs_off,
        *([] if WRITES_FETCH_HEAD else [_a_fetch_head_never_written]),
    ],
)
def test_a_repository_the_delivery_can_write_is_accepted_and_gets_its_branch(
    scratch: Path, writable: Callable[[Path], Path]
) -> None:
    repo = writable(scratch)

    attempted = attempt(scratch, repo)

    assert attempted.refused == ""
    assert attempted.delivered == f"1 tasks on branch {BRANCH} of {repo}"
    assert git(repo, "show", f"{BRANCH}:notes.md") == "notes\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


if __name__ == "__main__":
    _as_nobody(sys.argv[1])
