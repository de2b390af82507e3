"""`codeyard run` against `codeyard up` and scripted workers, all real processes."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from codeyard.bus import EmbeddedNats
from codeyard.bus.embedded import free_port
from codeyard.schemas import ApprovalList, TaskSpec
from codeyard.workspace.git import git
from tests.processes import codeyard, start, stop
from tests.repositories import one_commit_repo


@asynccontextmanager
async def running_system(
    tmp_path: Path,
    up_options: tuple[str, ...] = (),
    worker_options: tuple[str, ...] = ("--fail-tests", "b"),
) -> AsyncIterator[tuple[dict[str, str], list[asyncio.subprocess.Process]]]:
    """`codeyard up --no-agents` on a free port, plus scripted coder, tester and reviewer
    workers (in that order), each connected as its role's user (from the credentials `up`
    generated); yields the environment to use and the workers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEYARD_NATS_")} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "CODEYARD_NATS_PORT": str(port),
        "NATS_URL": "",
        # the dashboard `up` starts: a port of its own, a token the tests know
        "CODEYARD_DASHBOARD_PORT": str(free_port()),
        "CODEYARD_DASHBOARD_TOKEN": "dashboard-token-of-the-tests",
    }
    up_command = ("-m", "codeyard", "up", "--no-agents", *up_options)
    up, _ = await start(*up_command, env=env, ready=b"Ctrl-C stops")
    workers: list[asyncio.subprocess.Process] = []
    try:
        worker_env = env | {
            "NATS_URL": f"nats://127.0.0.1:{port}",
            "CODEYARD_NATS_CREDENTIALS_DIR": str(tmp_path / "data" / "nats" / "credentials"),
        }
        for role in ("coder", "tester", "review"):
            worker, _ = await start(
                "-m",
                "codeyard.testing.scripted_worker",
                *("--roles", role, *worker_options),
                env=worker_env,
                ready=b"READY",
            )
            workers.append(worker)
    except BaseException:
        for process in (*workers, up):
            await stop(process)
        raise
    try:
        yield env, workers
    finally:
        for process in (*workers, up):
            await stop(process)


@asynccontextmanager
async def running_up(tmp_path: Path, *up_options: str) -> AsyncIterator[dict[str, str]]:
    """`running_system` with the default workers; yields the environment to use."""
    async with running_system(tmp_path, up_options) as (env, _):
        yield env


@pytest.fixture
async def codeyard_up(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    async with running_up(tmp_path) as env:
        yield env


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})


def codeyard_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return codeyard(env, "run", *args)


async def test_run_follows_a_run_to_the_end(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(
        msgspec.json.encode(
            [
                TaskSpec(id="a", title="models"),
                TaskSpec(id="b", title="api", deps=["a"]),
                TaskSpec(id="c", title="docs", deps=["b"]),
            ]
        )
    )
    args = ("add an api", "--repo", str(repo), "--plan", str(plan), "--run-id", "r1")
    result = await asyncio.to_thread(codeyard_run, codeyard_up, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "b: coding (attempt 2)" in result.stdout  # the failed test sent it back
    assert "run r1 done: 3/3 tasks merged" in result.stdout

    # one commit per task on the result branch; the user's branch and tree are untouched
    log = git(repo, "log", "--format=%s", "codeyard/r1").splitlines()
    assert log == ["docs", "api", "models", "initial"]
    assert git(repo, "show", "codeyard/r1:notes/b.txt") == "attempt 2\n"  # the fixed attempt
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--show-current").strip() in ("main", "master")
    assert not (repo / "notes").exists()


async def test_bad_input_is_refused_clearly(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    cyclic = tmp_path / "cyclic.json"
    cyclic.write_bytes(
        msgspec.json.encode(
            [TaskSpec(id="a", title="a", deps=["b"]), TaskSpec(id="b", title="b", deps=["a"])]
        )
    )
    refused = await asyncio.to_thread(
        codeyard_run, codeyard_up, "g", "--repo", str(repo), "--plan", str(cyclic)
    )
    assert refused.returncode == 2  # bad input, as --help says: it exited 1
    assert refused.stderr == (
        "error: invalid plan: dependency cycle a -> b -> a (each depends on the next) (at $.plan)\n"
    )
    for tasks, problem in (
        ([], "the plan has no tasks"),
        ([TaskSpec(id="a", title="a", deps=["z"])], "task 'a' depends on unknown task 'z'"),
    ):
        other = tmp_path / "other.json"
        other.write_bytes(msgspec.json.encode(tasks))
        refused = await asyncio.to_thread(
            codeyard_run, codeyard_up, "g", "--repo", str(repo), "--plan", str(other)
        )
        assert refused.returncode == 2
        assert refused.stderr == f"error: invalid plan: {problem} (at $.plan)\n"

    # a repository the coordinator could not clone (no commit yet): said before submitting
    no_commit = tmp_path / "no-commit"
    no_commit.mkdir()
    git(no_commit, "init", "-q")
    not_cloned = await asyncio.to_thread(codeyard_run, codeyard_up, "g", "--repo", str(no_commit))
    assert not_cloned.returncode == 2, not_cloned.stdout + not_cloned.stderr
    assert not_cloned.stderr == (
        f"error: {no_commit} has no commit yet: a run starts from the last commit; commit first\n"
    )

    not_a_repo = await asyncio.to_thread(codeyard_run, codeyard_up, "g", "--repo", str(tmp_path))
    assert not_a_repo.returncode == 2
    assert "not a git repository" in not_a_repo.stderr

    garbage = tmp_path / "garbage.json"
    garbage.write_text('[{"id": "a"}]')
    bad_plan = await asyncio.to_thread(
        codeyard_run, codeyard_up, "g", "--repo", str(repo), "--plan", str(garbage)
    )
    assert bad_plan.returncode == 2
    assert "title" in bad_plan.stderr


async def test_a_person_approves_each_merge_from_the_command_line(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r2", "--approve-merge")
    following = asyncio.create_task(asyncio.to_thread(codeyard_run, codeyard_up, *args))

    listed = ""
    for _ in range(100):
        listed = (await asyncio.to_thread(codeyard, codeyard_up, "approvals")).stdout
        if "merge" in listed:
            break
        await asyncio.sleep(0.3)
    row = next(line for line in listed.splitlines() if " merge " in f" {line} ")
    approval_id = row.strip(" │|").split()[-1]  # the last column
    of_r2 = await asyncio.to_thread(codeyard, codeyard_up, "approvals", "--run", "r2", "--json")
    of_another = await asyncio.to_thread(codeyard, codeyard_up, "approvals", "--run", "r9")
    bogus = await asyncio.to_thread(codeyard, codeyard_up, "approve", "0000000000000000")
    approved = await asyncio.to_thread(
        codeyard, codeyard_up, "approve", approval_id, "--comment", "looks right"
    )
    result = await following

    assert "r2" in row
    only_r2 = msgspec.json.decode(of_r2.stdout, type=ApprovalList)
    assert [a.approval_id for a in only_r2.approvals] == [approval_id]
    assert "nothing waits for approval" in of_another.stdout
    assert bogus.returncode == 1
    assert "no pending approval" in bogus.stderr
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == f"approved {approval_id} (run r2): the task goes on\n"
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"codeyard approve {approval_id}" in result.stdout  # the follower said how
    assert "a: awaiting_approval" in result.stdout
    assert "run r2 done: 1/1 tasks merged" in result.stdout
    nothing = await asyncio.to_thread(codeyard, codeyard_up, "approvals")
    assert "nothing waits for approval" in nothing.stdout


async def test_up_runs_a_reviewer_plugin_whose_approval_every_task_needs(
    repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    async with running_up(tmp_path, "--reviewer", "static") as env:
        reviewers = ("--reviewer", "review", "--reviewer", "review.static")
        args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r3", *reviewers)
        result = await asyncio.to_thread(codeyard_run, env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    message = git(repo, "log", "-1", "--format=%B", "codeyard/r3")
    assert "Reviewed-by: review, review.static" in message


async def test_giving_up_following_says_the_run_goes_on_and_how_to_reach_it(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """--timeout and Ctrl-C stop `codeyard run` following, not the run: it says so."""
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    waiting = ("g", "--repo", str(repo), "--plan", str(plan), "--approve-merge")  # nobody answers

    timed_out = await asyncio.to_thread(
        codeyard_run, codeyard_up, *waiting, "--run-id", "r4", "--timeout", "3"
    )
    assert timed_out.returncode == 1
    assert "did not finish within 3s" in timed_out.stderr
    assert "run r4 keeps going: follow it with `codeyard logs -f r4`" in timed_out.stderr
    assert "`codeyard cancel r4`" in timed_out.stderr

    # a reviewer no worker serves: its task would wait, without a word, until --timeout
    unserved = ("g", "--repo", str(repo), "--plan", str(plan), "--reviewer", "review.nosuch")
    waited = await asyncio.to_thread(
        codeyard_run, codeyard_up, *unserved, "--run-id", "r6", "--timeout", "8"
    )
    assert waited.returncode == 1
    assert (
        "warning: no worker of review.nosuch announced itself in 4s (`codeyard workers`): "
        "unless one serves it without announcing"
    ) in " ".join(waited.stderr.split())

    interrupted = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codeyard", "run", *waiting, "--run-id", "r5"),
        env=codeyard_up | {"PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert interrupted.stdout is not None
        while b"awaiting_approval" not in (line := await interrupted.stdout.readline()):
            assert line, "codeyard run ended before the run waited"
        interrupted.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(interrupted.communicate(), 30)
    finally:
        if interrupted.returncode is None:
            interrupted.kill()
            await interrupted.wait()
    assert interrupted.returncode == 130, stderr
    assert b"run r5 keeps going: follow it with `codeyard logs -f r5`" in stderr
    status = await asyncio.to_thread(codeyard, codeyard_up, "status", "r5")
    assert "awaiting_approval" in status.stdout  # still there, waiting, not cancelled

    # the merge it waits for, denied: the reply says what that did
    listed = await asyncio.to_thread(codeyard, codeyard_up, "approvals", "--json")
    [waiting_r5] = [
        a for a in msgspec.json.decode(listed.stdout)["approvals"] if a["run_id"] == "r5"
    ]
    denied = await asyncio.to_thread(codeyard, codeyard_up, "deny", waiting_r5["approval_id"])
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == f"denied {waiting_r5['approval_id']} (run r5): the task fails\n"


async def test_ctrl_c_before_any_coordinator_answered_does_not_say_the_run_goes_on(
    nats_server: EmbeddedNats, repo: Path
) -> None:
    """With no coordinator answering the submission, there may be no run at all to go on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))}
    env |= {"NATS_URL": nats_server.url, "PYTHONUNBUFFERED": "1"}
    asked = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "codeyard", "run", "g", "--repo", str(repo)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert asked.stdout is not None
        submitting = await asyncio.wait_for(asked.stdout.readline(), 30)  # "run ID: g"
        run_id = submitting.decode().removeprefix("run ").partition(":")[0]
        await asyncio.sleep(1)
        asked.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(asked.communicate(), 30)
    finally:
        if asked.returncode is None:
            asked.kill()
            await asked.wait()
    assert asked.returncode == 130, stderr
    assert b"keeps going" not in stderr
    said = f"run {run_id} was submitted, but no coordinator answered yet: `codeyard status "
    assert said.encode() in stderr


async def test_a_cost_limit_the_agents_do_not_price_is_said_to_limit_nothing(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r9", "--max-cost", "5")
    done = await asyncio.to_thread(codeyard_run, codeyard_up, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    # (the scripted coder reports a call and no cost, as a model with no prices set does)
    assert "warning: the coder's LLM calls are priced at $0 where it runs" in done.stderr
    assert done.stderr.count("warning:") == 1


async def test_a_plan_nobody_answers_here_is_told_with_the_commands_that_answer_it(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """Piped, `codeyard run` asks nothing; the events say the run waits but have no id for a
    question of its own (a gate's approvals have theirs): it is looked up and told."""
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r8", "--approve-plan")
    left_waiting = await asyncio.to_thread(codeyard_run, codeyard_up, *args, "--timeout", "3")
    assert "run r8 keeps going" in left_waiting.stderr

    listed = await asyncio.to_thread(codeyard, codeyard_up, "approvals", "--run", "r8", "--json")
    [plan_approval] = msgspec.json.decode(listed.stdout, type=ApprovalList).approvals
    approval_id = plan_approval.approval_id
    assert (
        "r8 waits: approve the plan of 1 tasks:\n  a: models\n"
        f"    codeyard approve {approval_id}   or   codeyard deny {approval_id}\n"
    ) in left_waiting.stdout


async def test_a_run_id_taken_by_another_submission_is_refused_before_anything_is_shown(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """The coordinator refuses such a submission, but only after `codeyard run` had replayed
    the other run's whole history as if it were the new one's."""
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    common = ("--repo", str(repo), "--plan", str(plan))
    done = await asyncio.to_thread(codeyard_run, codeyard_up, "first", *common, "--run-id", "r6")
    assert done.returncode == 0, done.stdout + done.stderr
    waiting = ("waits", *common, "--run-id", "r7", "--approve-plan", "--timeout", "2")
    left_waiting = await asyncio.to_thread(codeyard_run, codeyard_up, *waiting)
    assert "run r7 keeps going" in left_waiting.stderr  # nobody approves its plan: still open

    for taken, state, other in (
        ("r6", "done", "goal"),
        ("r7", "plan_approval", "goal, plan approval"),  # r7 was submitted with --approve-plan
    ):
        refused = await asyncio.to_thread(
            codeyard_run, codeyard_up, "another goal", *common, "--run-id", taken
        )
        assert refused.returncode == 2
        assert refused.stdout == ""  # nothing of the run that has the id
        assert refused.stderr == (
            f"error: --run-id '{taken}' is taken: run {taken} exists already ({state}) with "
            f"another {other}; see `codeyard status {taken}`, or choose another --run-id\n"
        )

    # the same goal with another test command would follow a run that does not run it
    other_command = ("first", *common, "--run-id", "r6", "--test-command", "make test")
    refused = await asyncio.to_thread(codeyard_run, codeyard_up, *other_command)
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: --run-id 'r6' is taken: run r6 exists already (done) with another test "
        "command; see `codeyard status r6`, or choose another --run-id\n"
    )

    # the same goal again is the same submission again, which is safe: it is followed
    again = await asyncio.to_thread(codeyard_run, codeyard_up, "first", *common, "--run-id", "r6")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr == (
        "run r6 exists already (done) with this goal: following it, not starting another\n"
    )
    assert "run r6 done: 1/1 tasks merged" in again.stdout


async def test_a_failed_run_says_how_to_keep_the_tasks_it_merged(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """It delivers no branch: its merged tasks are only in its clone, until that is collected.
    It said only "failed: 1/2 tasks merged", and `rollback` then "no branch codeyard/r8"."""
    plan = tmp_path / "plan.json"
    # b starts once a is merged: a merge denied first would fail the run before a's
    a, b = TaskSpec(id="a", title="kept"), TaskSpec(id="b", title="x", deps=["a"])
    plan.write_bytes(msgspec.json.encode([a, b]))
    args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r8", "--approve-merge")
    following = asyncio.create_task(asyncio.to_thread(codeyard_run, codeyard_up, *args))
    answered: set[str] = set()
    while not following.done() and len(answered) < 2:
        listed = await asyncio.to_thread(
            codeyard, codeyard_up, "approvals", "--run", "r8", "--json"
        )
        for approval in msgspec.json.decode(listed.stdout, type=ApprovalList).approvals:
            if approval.action == "merge" and approval.task_id not in answered:
                verb = "approve" if approval.task_id == "a" else "deny"
                answer = await asyncio.to_thread(codeyard, codeyard_up, verb, approval.approval_id)
                assert answer.returncode == 0, answer.stderr
                answered.add(approval.task_id)
        await asyncio.sleep(0.3)
    result = await following

    assert result.returncode == 1, result.stdout + result.stderr
    assert "run r8 failed: 1/2 tasks merged" in result.stdout
    [salvage] = [line for line in result.stdout.splitlines() if "integration clone" in line]
    command = salvage.partition("to keep them: ")[2]
    assert command.startswith(f"git -C {repo} fetch ")
    assert command.endswith(" HEAD:refs/heads/salvage/r8")
    fetched = subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)
    assert fetched.returncode == 0, fetched.stderr
    subjects = git(repo, "log", "--format=%s", "salvage/r8")
    assert "kept" in subjects  # the task merged, in the user's repository now
    rollback = await asyncio.to_thread(codeyard, codeyard_up, "rollback", "r8", "--to", "a")
    assert rollback.returncode == 1
    assert "only a run that ended done delivers one" in rollback.stderr
    assert "see `codeyard cancel --help`" in rollback.stderr
