"""`codeyard run` and other commands refusing bad input before they connect to anything: no
NATS runs here, so an answer that needed one would say it cannot reach it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from codeyard.bus.embedded import EmbeddedNats, find_nats_server, free_port
from codeyard.workspace.git import git
from tests.processes import codeyard
from tests.repositories import one_commit_repo, write_files


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A NATS that is not there: whatever goes wrong, nothing of the user's is reached."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CODEYARD_", "NATS_"))} | {
        "CODEYARD_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "COLUMNS": "200",
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})


def test_an_error_shows_brackets_as_written(env: dict[str, str], tmp_path: Path) -> None:
    """Rich markup used to swallow the bracketed parts of what an error quotes."""
    not_a_repo = tmp_path / "[bold]draft[a-z0-9]"
    not_a_repo.mkdir()
    refused = codeyard(env, "run", "g", "--repo", str(not_a_repo))
    assert refused.returncode == 2
    assert f"{not_a_repo} is not a git repository" in refused.stderr


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{oops", "malformed JSON: JSON is malformed: expected '\"' (byte 1)"),
        ('{"id": "a"}', "Expected `array`, got `object`"),
    ],
    ids=["broken-object", "an-object"],
)
def test_a_plan_file_that_is_not_json_says_so(
    env: dict[str, str], repo: Path, tmp_path: Path, text: str, reason: str
) -> None:
    """`{oops` was said to be "not a list of tasks: Expected `array`, got `object`"."""
    (tmp_path / "plan.json").write_text(text, encoding="utf-8")
    refused = codeyard(env, "run", "g", "--repo", str(repo), "--plan", str(tmp_path / "plan.json"))
    assert refused.returncode == 2
    assert refused.stderr.endswith(f"plan.json is not a list of tasks: {reason} (at $)\n")


def test_a_repository_that_cannot_be_run_says_what_to_give_instead(
    env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """Each was "not a git repository (no .git)", or (no commit) failed at the coordinator."""
    (repo / "src").mkdir()
    git(tmp_path, "init", "--quiet", "--bare", "bare.git")
    git(tmp_path, "init", "--quiet", "empty")
    expected = {
        repo / "src": f"is inside the git repository {repo}: give --repo {repo}",
        tmp_path / "bare.git": "is a bare repository: give a clone of it (with a working tree)",
        tmp_path / "empty": "has no commit yet: a run starts from the last commit; commit first",
        # it said "not a git repository (no .git)"
        repo / ".git": f"is inside a repository's git directory: give its work tree, --repo {repo}",
    }
    for path, problem in expected.items():
        refused = codeyard(env, "run", "g", "--repo", str(path))
        assert refused.returncode == 2
        assert refused.stderr == f"error: {path} {problem}\n"
    # GIT_DIR exported (a hook, say) names another repository: not the one given
    elsewhere = codeyard(
        env | {"GIT_DIR": str(tmp_path / "empty" / ".git")}, "run", "g", "--repo", str(repo)
    )
    assert elsewhere.stderr.startswith("error: cannot reach NATS"), elsewhere.stderr


REVIEWER_IN_WORDS = (
    "`review` (the LLM reviewer) or `review.NAME` (a plugin), NAME being 1 to 32 lowercase "
    "letters, digits, _ and -, starting with a letter or digit"
)


@pytest.mark.parametrize(
    ("args", "plan", "message"),
    [
        (
            ("run", "g", "--reviewer", "review", "--reviewer", "BAD"),
            None,
            f"error: --reviewer 'BAD': a reviewer is {REVIEWER_IN_WORDS}\n",
        ),
        (
            ("run", "g"),
            [{"id": "a.b", "title": "t"}],
            "is not a list of tasks: Expected an id of 1 to 64 letters, digits, _ and -, "
            "starting with a letter or digit (at $[0].id)\n",
        ),
        (
            ("run", "g"),
            [{"id": "a", "title": "t", "reviewers": ["Review"]}],
            f"is not a list of tasks: Expected a reviewer: {REVIEWER_IN_WORDS} "
            "(at $[0].reviewers[0])\n",
        ),
        (
            ("bench", "humaneval", "--run-id", "a.b"),
            None,
            "error: --run-id 'a.b': the runs are named PREFIX-N, so PREFIX is 1 to 60 letters, "
            "digits, _ and -, starting with a letter or digit\n",
        ),
        (
            ("run", "g"),
            [{"id": "a", "title": "t"}, {"id": "b", "title": "u", "depends_on": ["a"]}],
            "is not a list of tasks: Object contains unknown field `depends_on` "
            "(at $[1].depends_on)\n",
        ),
    ],
    ids=["reviewer", "plan-id", "plan-reviewer", "bench-run-id", "plan-typo"],
)
def test_what_a_pattern_accepts_is_said_in_words_not_as_a_regex(
    env: dict[str, str],
    repo: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    plan: list[dict[str, object]] | None,
    message: str,
) -> None:
    options = ["--repo", str(repo)] if args[0] == "run" else []
    if plan is not None:
        (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        options += ["--plan", str(tmp_path / "plan.json")]
    refused = codeyard(env, *args, *options)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.endswith(message)
    assert refused.stderr.count("\n") == 1
    assert "regex" not in refused.stderr
    assert "[a-z0-9]" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("",), "the goal is empty"),
        (("  ",), "the goal is empty"),
        (("g", "--timeout", "0"), "--timeout must be more than 0 seconds, not 0"),
        (("g", "--timeout", "-5"), "--timeout must be more than 0 seconds, not -5"),
        (("g", "--run-id", "../../etc"), "--run-id '../../etc': a run id is 1 to 64 letters"),
        (("g", "--run-id", "a.b"), "--run-id 'a.b': a run id is 1 to 64 letters"),
        (("g", "--run-id", "x" * 65), "a run id is 1 to 64 letters, digits, _ and -"),
        (("g", "--test-command", ""), "--test-command is empty: give the shell line that runs"),
        (("g", "--test-command", " \n "), "--test-command is empty"),
        (
            ("g", "--test-command", "x" * 20_001),
            "--test-command is 20,001 characters long; at most 20,000",
        ),
    ],
)
def test_bad_run_arguments_are_refused_once_before_connecting(
    env: dict[str, str], repo: Path, args: tuple[str, ...], message: str
) -> None:
    goal, *options = args
    refused = codeyard(env, "run", goal, "--repo", str(repo), *options)
    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr
    assert refused.stderr.count("error:") == 1
    assert "NATS" not in refused.stderr


@pytest.mark.parametrize("timeout", ["-1", "0", "nan"])
def test_the_benchmark_refuses_a_wait_of_no_time(env: dict[str, str], timeout: str) -> None:
    """`bench humaneval --timeout -1` ran the benchmark (its runs all timed out at once)."""
    refused = codeyard(env, "bench", "humaneval", "--limit", "1", "--timeout", timeout)
    assert refused.returncode == 2, refused.stderr
    assert "Invalid value for '--timeout'" in refused.stderr
    assert "is not more than 0." in refused.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("logs", ""),
        ("logs", "--follow", ""),
        ("report", ""),
        ("rollback", "", "--to", "a"),
        ("status", "a b"),
        ("status", ""),
        ("cancel", ""),
        ("approvals", "--run", ""),
    ],
    ids=[
        "logs",
        "logs-follow",
        "report",
        "rollback",
        "status",
        "status-empty",
        "cancel",
        "approvals",
    ],
)
def test_a_run_id_that_is_none_is_refused_before_connecting(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    """A status query of no run id is one of every run: `codeyard report ""` reported the first
    run the coordinator knew, someone else's. `status` and `cancel` exited 1 (a refusal) where
    the others exit 2 (bad input)."""
    refused = codeyard(env, *command)
    assert refused.returncode == 2, refused.stderr
    given = next(arg for arg in command[1:] if arg in ("", "a b"))
    assert refused.stderr == (
        f"error: {given!r} is not a run id: a run id is 1 to 64 letters, digits, _ and -, "
        "starting with a letter or digit\n"
    )


def test_a_blank_reason_to_cancel_is_refused_before_connecting(env: dict[str, str]) -> None:
    """It printed "cancelled r1: " and recorded no reason with the run."""
    refused = codeyard(env, "cancel", "r1", "--reason", " ")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        "error: --reason is blank: say why the run is cancelled, or leave --reason out\n"
    )


@pytest.mark.parametrize(("verb", "given"), [("approve", ""), ("deny", ""), ("approve", "a.b")])
def test_an_approval_id_that_is_none_is_refused_before_connecting(
    env: dict[str, str], verb: str, given: str
) -> None:
    """The coordinator's refusal came back as exit 1, quoting the id's regular expression."""
    refused = codeyard(env, verb, given)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        f"error: {given!r} is not an approval id: an approval id is 1 to 64 letters, digits, _ "
        "and -, starting with a letter or digit\n"
    )


def test_an_answer_the_coordinator_would_refuse_is_not_sent(env: dict[str, str]) -> None:
    refused = codeyard(env, "approve", "a1", "--by", "x" * 201)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == ("error: not sent: Expected `str` of length <= 200 (at $.by)\n"), (
        refused.stderr
    )


def test_a_goal_over_the_limit_is_refused_before_connecting(
    env: dict[str, str], repo: Path
) -> None:
    refused = codeyard(env, "run", "x" * 20_001, "--repo", str(repo))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == "error: the goal is 20,001 characters long; at most 20,000\n"


@pytest.mark.parametrize(
    "command",
    [("schemas", "export"), ("deploy", "nats-config", "--out")],
    ids=["schemas", "deploy"],
)
def test_a_directory_that_cannot_be_written_is_one_line_not_a_traceback(
    env: dict[str, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n", encoding="utf-8")

    on_a_file = codeyard(env, *command, str(a_file))
    under_a_file = codeyard(env, *command, str(a_file / "inside"))

    assert on_a_file.returncode == 1
    assert (
        on_a_file.stderr == f"error: cannot write to {a_file}: it exists and is not a directory\n"
    )
    assert under_a_file.returncode == 1
    assert under_a_file.stderr.startswith(f"error: cannot write to {a_file / 'inside'}: ")
    assert "Traceback" not in under_a_file.stderr
    assert a_file.read_text(encoding="utf-8") == "not a directory\n"


@pytest.mark.parametrize(
    "command",
    [("status",), ("logs", "r1"), ("approvals",), ("run", "g", "--repo", "REPO")],
    ids=["status", "logs", "approvals", "run"],
)
def test_nats_not_there_is_one_line_not_one_per_attempt(
    env: dict[str, str], repo: Path, command: tuple[str, ...]
) -> None:
    """nats-py reports every failed attempt to connect; a command used to print each one."""
    args = [str(repo) if arg == "REPO" else arg for arg in command]
    unreachable = codeyard(env, *args)
    assert unreachable.returncode == 1
    assert unreachable.stderr == (
        f"error: cannot reach NATS at {env['NATS_URL']}: nats: no servers available for connection "
        "(is `codeyard up` running?)\n"
    )


def test_without_nats_url_the_port_looked_at_is_named(env: dict[str, str]) -> None:
    """Another terminal than up's, without its CODEYARD_NATS_PORT, looked on 4222 and said only
    "is codeyard up running?": it was."""
    port = free_port()
    env = {k: v for k, v in env.items() if k != "NATS_URL"} | {"CODEYARD_NATS_PORT": str(port)}
    unreachable = codeyard(env, "status")
    assert unreachable.returncode == 1
    assert unreachable.stderr == (
        f"error: cannot reach NATS at nats://127.0.0.1:{port}: nats: no servers available for "
        "connection (is `codeyard up` "
        f"running? Without NATS_URL, codeyard looks for up's server on port CODEYARD_NATS_PORT "
        f"({port}): set it as up has it)\n"
    )


@pytest.mark.parametrize(
    "command", [("status",), ("worker", "review", "--name", "static")], ids=["cli", "service"]
)
def test_a_server_that_refuses_the_login_is_not_called_unreachable(
    env: dict[str, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    """It answered, and said no (here: no credentials were found, as when NATS_URL names the
    server of an `up` with another data dir); it used to be reported as not running, and a
    service said "cannot reach NATS" with exit 1."""
    port = free_port()
    server_command = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), "--user", "u"]
    with subprocess.Popen([*server_command, "--pass", "p"], stderr=subprocess.DEVNULL) as server:
        try:
            refused = codeyard(env | {"NATS_URL": f"nats://127.0.0.1:{port}"}, *command)
        finally:
            server.kill()
    assert refused.returncode == 2
    said = refused.stderr.splitlines()[-1]  # (a service logs the attempts before)
    assert said.startswith(
        f"error: NATS at nats://127.0.0.1:{port} refused the login without credentials: "
        "nats: 'Authorization Violation'. Without NATS_URL, codeyard logs in with the "
        "credentials `codeyard up` wrote"
    ), refused.stderr


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (
            "foo",
            "error: unknown role 'foo': expected planner, coder, tester or review (a reviewer "
            "plugin: codeyard worker review --name NAME)\n",
        ),
        (
            "review.static",
            "error: review.static is a reviewer plugin's role: codeyard worker review --name "
            "static\n",
        ),
    ],
    ids=["unknown", "plugin-role"],
)
def test_a_worker_of_no_builtin_role_is_refused_before_the_llm_is_looked_for(
    env: dict[str, str], role: str, message: str
) -> None:
    """With no LLM configured either, the role is what is wrong first: it used to say only
    that no LLM endpoint was configured."""
    without_llm = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}
    refused = codeyard(without_llm, "worker", role)
    assert refused.returncode == 2
    assert refused.stderr == message


def test_uncommitted_changes_are_named_as_left_out_of_the_run(
    env: dict[str, str], repo: Path
) -> None:
    """The run starts from the repository's last commit: what is not committed used to be left
    out without a word. It is not refused: the run is submitted (here: NATS is not there)."""
    (repo / "README.md").write_text("edited, not committed\n", encoding="utf-8")
    write_files(repo, {f"{name}.py": "" for name in "abcdef"})
    (repo / "staged.txt").write_text("staged\n", encoding="utf-8")
    git(repo, "add", "staged.txt")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()

    submitted = codeyard(env, "run", "g", "--repo", str(repo))

    warning, unreachable = submitted.stderr.splitlines()
    assert warning == (
        f"warning: uncommitted changes in {repo} are not part of the run, which starts from "
        f"the last commit ({head}): README.md, staged.txt, a.py, b.py, c.py and 3 more; commit "
        "them to include them"
    )
    assert unreachable.startswith("error: cannot reach NATS")
    assert submitted.returncode == 1


@pytest.mark.parametrize("service", [("gate",), ("worker", "review", "--name", "static")])
def test_a_service_started_before_the_coordinator_says_what_to_start(
    tmp_path: Path, service: tuple[str, ...]
) -> None:
    """It said "cannot reach NATS: BucketNotFoundError()" of a server that answered."""
    with EmbeddedNats(tmp_path / "nats", tied_to_parent=True) as server:  # nothing created
        env = os.environ | {"NATS_URL": server.url, "CODEYARD_DATA_DIR": str(tmp_path / "data")}
        refused = codeyard(env, *service, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith(
        f"error: NATS at {server.url} has no codeyard streams and buckets yet ("
    ), refused.stderr
    assert refused.stderr.endswith(
        "start the coordinator (or `codeyard up`) first, which creates them\n"
    )
