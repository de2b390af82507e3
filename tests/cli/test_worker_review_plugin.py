"""`codeyard worker review --plugin/--name`: refusals before anything starts, and a real plugin
worker process answering a review request over the test nats-server with no LLM configured."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.subjects import work_subject
from codeyard.cli import app
from codeyard.follow import RunRefused
from codeyard.schemas import (
    Budget,
    Patch,
    RepoRef,
    ReviewRequest,
    ReviewResult,
    Run,
    SubmitRun,
    TaskSpec,
)
from tests.agents.sample_repo import create_sample_repo
from tests.bus.results import collect_results
from tests.processes import stop
from tests.reviewers.conftest import patch_of
from tests.reviewers.test_loading import install_entry_points

SAMPLES = "tests.reviewers.sample_plugins"


def refusal(*args: str) -> str:
    """What `codeyard worker ...` says when it exits 2."""
    result = CliRunner().invoke(app, ["worker", *args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())  # rich may wrap long lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["review", "--name", "nope"], "no reviewer plugin named 'nope'"),
        (["review", "--plugin", "no_such_module:X", "--name", "x"], "cannot import module"),
        (["review", "--plugin", f"{SAMPLES}:Missing", "--name", "x"], "has no 'Missing'"),
        (
            ["review", "--plugin", f"{SAMPLES}:NoReview", "--name", "x"],
            "does not implement the reviewer protocol",
        ),
        (["review", "--plugin", f"{SAMPLES}:Approves", "--name", "Bad.Name"], "bad reviewer name"),
        (["review", "--plugin", f"{SAMPLES}:Approves"], "--plugin needs --name"),
        (["coder", "--name", "x"], "--plugin and --name are for reviewers"),
    ],
)
def test_a_plugin_that_cannot_run_exits_2_saying_why(args: list[str], message: str) -> None:
    assert message in refusal(*args)


def test_an_unknown_name_lists_the_registered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = install_entry_points(tmp_path, {"sample": f"{SAMPLES}:Approves"})
    monkeypatch.syspath_prepend(str(registered))
    assert "known: sample" in refusal("review", "--name", "nope")


def test_a_plugin_up_made_no_user_for_is_told_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to retry its login, refused over and over, then say to use up's data dir: the
    one it used."""
    credentials = tmp_path / "nats" / "credentials"  # as `codeyard up` leaves it
    credentials.mkdir(parents=True)
    (credentials / "ctl.env").write_text("CODEYARD_NATS_USER=ctl\nCODEYARD_NATS_PASSWORD=x\n")
    monkeypatch.setenv("CODEYARD_DATA_DIR", str(tmp_path))
    for name in ("NATS_URL", "CODEYARD_NATS_USER", "CODEYARD_NATS_CREDENTIALS_DIR"):
        monkeypatch.delenv(name, raising=False)
    said = refusal("review", "--plugin", f"{SAMPLES}:Approves", "--name", "notodos")
    assert f"codeyard up's server has no NATS user for review.notodos (none in {credentials})" in (
        said
    )
    assert "restart `codeyard up` with --reviewer-user notodos" in said


def test_run_refuses_a_reviewer_that_is_not_a_review_role(tmp_path: Path) -> None:
    repo = create_sample_repo(tmp_path / "calc")
    result = CliRunner().invoke(app, ["run", "goal", "--repo", str(repo), "--reviewer", "St atic"])
    assert result.exit_code == 2, result.output
    assert "review" in result.output


def test_run_submits_the_reviewers_it_is_given(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[SubmitRun] = []

    async def refuse(bus: Bus, submit: SubmitRun, *_: object, **__: object) -> Run:
        submitted.append(submit)
        raise RunRefused("seen")

    monkeypatch.setattr("codeyard.follow.submit_and_follow", refuse)
    monkeypatch.setenv("NATS_URL", nats_server.url)
    repo = create_sample_repo(tmp_path / "calc")
    # (a plugin's name alone, as `up --reviewer` takes it, is its role)
    reviewers = ["--reviewer", "review", "--reviewer", "static", "--reviewer", "review.static"]
    budget = ["--max-tokens", "50000", "--max-cost", "2.5"]
    result = CliRunner().invoke(app, ["run", "goal", "--repo", str(repo), *reviewers, *budget])
    assert result.exit_code == 1, result.output
    [submit] = submitted
    assert submit.reviewers == ["review", "review.static"]
    assert submit.budget == Budget(max_tokens=50_000, max_cost_usd=2.5)
    for option, value in (
        ("--max-cost", "nan"),
        ("--max-cost", "1e13"),
        ("--max-tokens", str(2**53 + 1)),
        ("--max-tokens", "-1"),
    ):
        bad = CliRunner().invoke(app, ["run", "goal", "--repo", str(repo), option, value])
        assert bad.exit_code == 2, (option, value)
        assert f"Invalid value for '{option}'" in bad.output


def plugin_env(nats_url: str) -> dict[str, str]:
    """The test's environment with NATS and without any LLM: a plugin must not need one."""
    llm = ("OPENAI_", "CODEYARD_LLM_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(llm)}
    return env | {"NATS_URL": nats_url, "CODEYARD_LOCAL_LLM": "0"}


async def test_the_static_plugin_reviews_as_its_own_process(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    repo = create_sample_repo(tmp_path / "calc")
    runner = "import os\n\n\ndef run(cmd: str) -> None:\n    os.system(cmd)\n"
    patch = patch_of(repo, {"calc/run.py": runner})
    review = ReviewRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TaskSpec(id="t1", title="run commands"),
        patch=Patch(text=patch),
        reviewer="review.static",
        repo=RepoRef(path=str(repo), snapshot=str(repo)),
    )
    await bus.publish(work_subject("review.static"), review)
    command = ("worker", "review", "--plugin", "codeyard.reviewers.static:StaticReviewer")
    with (tmp_path / "worker.log").open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "codeyard",
            *command,
            "--name",
            "static",
            env=plugin_env(nats_server.url),
            stderr=log,
        )
    try:
        [result] = await collect_results(bus, 1, timeout=120)
    except AssertionError:
        raise AssertionError((tmp_path / "worker.log").read_text()) from None
    finally:
        await stop(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    assert isinstance(result, ReviewResult)
    assert (result.run_id, result.task_id, result.attempt) == ("r1", "t1", 1)
    assert (result.reviewer, result.approved) == ("review.static", False)
    assert [(c.path, c.line) for c in result.comments] == [("calc/run.py", 5)]
    assert "B605" in result.comments[0].text


async def test_a_plain_plugin_reviews_as_many_at_once_as_its_concurrency(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """A plain `def review` ran in the loop's default threads, min(32, CPUs + 4): on two cores,
    --concurrency 12 reviewed 6 at a time."""
    for n in range(12):
        review = ReviewRequest(
            run_id="r1",
            task_id=f"t{n}",
            attempt=1,
            task=TaskSpec(id=f"t{n}", title="wait"),
            patch=Patch(text=""),
            reviewer="review.twelve",
        )
        await bus.publish(work_subject("review.twelve"), review)
    plugin = ("--plugin", f"{SAMPLES}:MeetsTwelve", "--name", "twelve", "--concurrency", "12")
    with (tmp_path / "worker.log").open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "codeyard",
            "worker",
            "review",
            *plugin,
            env=plugin_env(nats_server.url),
            stderr=log,
        )
    try:
        results = await collect_results(bus, 12, timeout=120)
    except AssertionError:
        raise AssertionError((tmp_path / "worker.log").read_text()) from None
    finally:
        await stop(worker)
    assert all(isinstance(r, ReviewResult) and r.approved for r in results), results
