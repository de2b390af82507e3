"""The host's git config runs no program in codeyard's git commands.

A hook runs whatever it likes from the working tree it runs in; in a run's integration clone
that is the code a task's patch wrote, and the coordinator runs on the host, outside the sandbox.
Hooks come from a global `core.hooksPath` or from `init.templateDir`, which copies them into
every new clone (`pre-commit init-templatedir` sets that up). A global `commit.gpgSign` would fail
every merge.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from codeyard.agents.edits import apply_edits
from codeyard.agents.outputs import WriteFile
from codeyard.agents.working_copy import working_copy
from codeyard.coordinator.events import Merged
from codeyard.schemas import Patch, RepoRef, Run, Task, TaskSpec, TaskState
from codeyard.workspace.git import IDENTITY, git
from codeyard.workspace.integration import GitIntegrator
from tests.repositories import one_commit_repo

# The hooks a prepare, a merge or a delivery could run.
HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-merge",
    "post-rewrite",
    "pre-auto-gc",
    "reference-transaction",
    "post-index-change",
)
# A task's patch adding a script, and a hook running it, as hooks run the repository's linters.
LINT = '#!/bin/sh\necho "the task\'s code ran on the host" >> "$RAN"\n'
PATCH = (
    "diff --git a/lint.sh b/lint.sh\nnew file mode 100755\n--- /dev/null\n+++ b/lint.sh\n"
    "@@ -0,0 +1,2 @@\n" + "".join(f"+{line}\n" for line in LINT.splitlines())
)
HOOK = '#!/bin/sh\necho "{name}" >> "$RAN"\n[ -x ./lint.sh ] && ./lint.sh\nexit 0\n'


def program(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A global git config (GIT_CONFIG_GLOBAL) that runs a program at every chance: hooks in
    `core.hooksPath` and in `init.templateDir`, an fsmonitor hook, a signing program for every
    commit and tag. Each writes its name to the file returned; signing fails."""
    ran = tmp_path / "ran"
    monkeypatch.setenv("RAN", str(ran))
    hooks, template = tmp_path / "hooks", tmp_path / "template"
    for name in HOOKS:
        program(hooks / name, HOOK.format(name=f"hooksPath {name}"))
        program(template / "hooks" / name, HOOK.format(name=f"templateDir {name}"))
    fsmonitor = program(tmp_path / "fsmonitor", '#!/bin/sh\necho fsmonitor >> "$RAN"\nexit 1\n')
    gpg = program(tmp_path / "gpg", '#!/bin/sh\necho gpg >> "$RAN"\nexit 1\n')
    config = tmp_path / "gitconfig"
    config.write_text(
        f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = {fsmonitor}\n"
        f"[init]\n\ttemplateDir = {template}\n"
        f"[commit]\n\tgpgSign = true\n[tag]\n\tgpgSign = true\n"
        f"[gpg]\n\tprogram = {gpg}\n[log]\n\tshowSignature = true\n"
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    return ran


def test_plain_git_would_run_them(ran: Path, tmp_path: Path) -> None:
    """What the config does to git run as the user runs it: the hooks run, signing fails."""
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    program(repo / "lint.sh", LINT)
    commit = subprocess.run(
        ["git", "-C", str(repo), "commit", "--allow-empty", "-m", "x"],
        capture_output=True,
        text=True,
        env=os.environ | IDENTITY,
    )
    assert commit.returncode != 0
    assert "gpg failed to sign" in commit.stderr
    ran_programs = set(ran.read_text().splitlines())
    assert {"hooksPath pre-commit", "the task's code ran on the host"} <= ran_programs
    assert {"fsmonitor", "gpg"} <= ran_programs


async def test_a_run_prepared_merged_copied_and_delivered_runs_none_of_them(
    ran: Path, tmp_path: Path
) -> None:
    user_repo = one_commit_repo(tmp_path / "user", {"app.py": "print('hello')\n"})
    task = Task(spec=TaskSpec(id="a", title="add a lint script"), patch=Patch(text=PATCH))
    run = Run(run_id="r1", goal="g", repo=RepoRef(path=str(user_repo)), tasks={"a": task})
    integrator = GitIntegrator(tmp_path / "data")

    run.repo = await integrator.prepare(run)
    merged = await integrator.merge(run, "a", 1)
    assert isinstance(merged, Merged), merged
    assert merged.repo is not None
    async with working_copy(merged.repo) as root:  # a worker sharing the coordinator's disk
        assert (root / "lint.sh").is_file()
    task.state = TaskState.MERGED
    delivered = await integrator.integrate(run)

    assert delivered.ok, delivered.report
    assert not ran.exists(), ran.read_text()
    assert git(user_repo, "log", "--format=%s", "codeyard/r1").split("\n")[0] == "add a lint script"
    clone = Path(run.repo.snapshot)
    assert not (clone / ".git" / "hooks").exists()  # nothing copied from the template either


def test_edits_made_in_a_working_copy_run_none_of_them(
    ran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coder's edits are added to an index of their own (`git add`, `git diff`) in the working
    copy that holds the model's code. That git takes no GIT_* variable from its environment,
    so the user's config is the one in HOME."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(Path(os.environ["GIT_CONFIG_GLOBAL"]).read_text())
    monkeypatch.setenv("HOME", str(home))
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})

    applied = apply_edits(repo, [WriteFile(kind="write", path="lint.sh", content=LINT)])

    assert "+++ b/lint.sh" in applied.diff
    assert not ran.exists(), ran.read_text()
