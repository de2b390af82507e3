"""The HumanEval harness's pieces: problems, the repository given to the coder, the sandboxed
evaluation against the hidden tests, and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.bench.humaneval import (
    BenchError,
    MethodReport,
    Outcome,
    bench_humaneval,
    build_report,
    check_new_runs,
    evaluate,
    load_problems,
    make_repo,
    model_in_use,
    normalise_id,
    render,
    run_id_for,
    run_single_shot,
    task_for,
)
from codeyard.bus import Bus
from codeyard.bus.embedded import free_port
from codeyard.coordinator.service import Coordinator
from codeyard.follow import RunIdTaken, existing_run
from codeyard.llm import LLMSettings
from codeyard.sandbox import Limits, RunOutcome, default_sandbox
from codeyard.schemas import ControlError, SubmitRun, Usage
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from codeyard.workspace.git import git
from tests.coordinator.harness import ask, running_coordinator
from tests.e2e.stack import sandbox_missing


def test_problems_come_from_the_packaged_dataset() -> None:
    assert len(load_problems()) == 164
    first_two = load_problems(limit=2)
    assert [p["task_id"] for p in first_two] == ["HumanEval/0", "HumanEval/1"]
    chosen = load_problems(["HumanEval/3", "7", "HumanEval_9"])
    assert [p["task_id"] for p in chosen] == ["HumanEval/3", "HumanEval/7", "HumanEval/9"]
    assert normalise_id(" HumanEval/12 ") == "HumanEval/12"
    with pytest.raises(BenchError, match="HumanEval/999"):
        load_problems(["999"])


def test_the_coders_repository_holds_the_prompt_and_no_hidden_test(tmp_path: Path) -> None:
    problem = load_problems(["0"])[0]
    repo = make_repo(tmp_path / "p0", problem)
    files = git(repo, "ls-files").split()
    assert sorted(files) == [
        "README.md",
        "conftest.py",
        "pyproject.toml",
        "solution.py",
        "tests/test_imports.py",
    ]
    assert (repo / "solution.py").read_text() == problem["prompt"]
    everything = "".join((repo / name).read_text() for name in files)
    assert "def check(" not in everything
    assert "candidate(" not in everything
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")
async def test_evaluation_runs_the_hidden_tests_in_the_sandbox() -> None:
    problem = load_problems(["HumanEval/0"])[0]
    sandbox = default_sandbox()
    right = problem["prompt"] + problem["canonical_solution"]
    wrong = problem["prompt"] + "    return False\n"
    assert (await evaluate(sandbox, problem, right)).passed
    failed = await evaluate(sandbox, problem, wrong)
    assert not failed.passed
    assert "AssertionError" in failed.detail
    looping = problem["prompt"] + "    while True:\n        pass\n"
    stopped = await evaluate(sandbox, problem, looping, Limits(wall_seconds=3, cpu_seconds=2))
    assert not stopped.passed
    assert (await evaluate(sandbox, problem, None)).detail == "nothing delivered"


def test_the_report_compares_the_two_methods() -> None:
    used = Usage(calls=2, prompt_tokens=100, completion_tokens=20, cost_usd=0.01)
    pipeline = MethodReport(
        "pipeline",
        [Outcome("HumanEval/0", True, usage=used), Outcome("HumanEval/2", True, usage=used)],
        12.0,
    )
    single = MethodReport(
        "single-shot",
        [Outcome("HumanEval/0", False, usage=used), Outcome("HumanEval/2", True, usage=used)],
        3.0,
    )
    report = build_report("m", pipeline, single)
    assert report.pipeline.pass_at_1 == 1.0
    assert report.single_shot.pass_at_1 == 0.5
    assert report.ratio == 2.0
    assert report.pipeline.prompt_tokens == 200
    assert [(r.pipeline, r.single_shot) for r in report.problems] == [(True, False), (True, True)]
    text = render(report)
    assert "| pipeline | 1.000 | 2/2 | 4 | 200 | 40 | 0.0200 | 12.0 |" in text
    assert "pipeline / single-shot pass@1: 2.00" in text
    zero = [Outcome("HumanEval/0", False), Outcome("HumanEval/2", False)]
    none = build_report("m", pipeline, MethodReport("single-shot", zero, 1.0))
    assert none.ratio is None
    assert "n/a (single-shot passed none)" in render(none)


@pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")
async def test_single_shot_is_one_call_per_problem_without_feedback() -> None:
    close, truncate = load_problems(["0", "2"])
    script = [
        {
            "tool": "submit_solution",
            "contains": "has_close_elements",
            "replies": [
                {"arguments": {"code": close["prompt"] + close["canonical_solution"]}},
            ],
        },
        {
            "tool": "submit_solution",
            "contains": "truncate_number",
            "replies": [{"raw_arguments": "{"}],
        },
    ]
    async with ScriptedOpenAI(parse_script(script)) as server:
        settings = LLMSettings(base_url=server.base_url, api_key="k", max_retries=0)
        report = await run_single_shot(settings, [close, truncate], default_sandbox())
        asked = [r.body["messages"][-1]["content"] for r in server.requests]
    assert [(o.problem, o.passed) for o in report.outcomes] == [
        ("HumanEval/0", True),
        ("HumanEval/2", False),
    ]
    assert report.outcomes[1].detail.startswith("no answer")
    assert len(asked) == 2  # the invalid answer was not re-asked
    assert report.usage.calls == 2
    assert all("def check(" not in text for text in asked)


@pytest.mark.skipif(bool(sandbox_missing()), reason=sandbox_missing() or "-")
async def test_the_report_names_the_model_that_answers(bus: Bus) -> None:
    """The report used to name the model asked for (the default gpt-4o-mini) even when a local
    server answered with its own one model, as the llama.cpp `codeyard up` starts does: its
    answers name the model asked for, only its list of models tells."""
    async with ScriptedOpenAI([]) as server:  # lists one model, `scripted`
        asked_default = LLMSettings(base_url=server.base_url, api_key="k", model="gpt-4o-mini")
        report = await bench_humaneval(
            bus, [], default_sandbox(), asked_default, run_prefix="he-model"
        )
        asked_by_name = LLMSettings(base_url=server.base_url, api_key="k", model="scripted")
        assert await model_in_use(asked_by_name, "coder") == "scripted"
    assert report.model == "scripted"
    assert render(report).startswith("HumanEval, 0 problems, model scripted\n")

    # an endpoint that lists no models (here: none answers) leaves the name asked for
    unlisted = LLMSettings(
        base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", model_coder="coder-model"
    )
    assert await model_in_use(unlisted, "coder") == "coder-model"


class NoSandbox:
    name = "none"

    async def run(self, *args: object, **kwargs: object) -> RunOutcome:
        raise AssertionError("nothing is evaluated in this test")


async def test_a_prefix_whose_runs_exist_is_refused_before_anything_is_submitted(
    bus: Bus, tmp_path: Path
) -> None:
    """The bench submitted its runs again under the same ids: the coordinator took each for the
    same submission sent again, and the bench followed the old runs and reported them as new
    (their results looked for in repositories made now). A benchmark measures new runs."""
    problems = load_problems(["0", "2", "3"])
    async with (
        running_coordinator(Coordinator(bus, name="coord-bench", capacity=4)),
        ScriptedOpenAI([]) as server,
    ):
        for problem in problems[:2]:  # what a bench with the prefix submitted before
            earlier = SubmitRun(
                run_id=run_id_for("he-again", problem),
                goal=f"{problem['task_id']}: implement {problem['entry_point']}",
                plan=[task_for(problem)],
            )
            assert not isinstance(await ask(bus, "submit", earlier), ControlError)
        settings = LLMSettings(base_url=server.base_url, api_key="k", max_retries=0)
        work = tmp_path / "work"
        with pytest.raises(RunIdTaken) as refused:
            await bench_humaneval(
                bus, problems, NoSandbox(), settings, run_prefix="he-again", workdir=work, timeout=3
            )
        assert str(refused.value) == (
            "--run-id 'he-again' is taken: runs he-again-0 (executing), he-again-2 (executing) "
            "exist already, and a benchmark measures new runs only; choose another --run-id, or "
            "leave it out for a new prefix each time"
        )
        # nothing submitted, nothing asked of the model, no repository made
        assert await existing_run(bus, "he-again-3") is None
        assert server.requests == []
        assert not work.exists()

        # one run of the prefix is enough, and named alone
        with pytest.raises(RunIdTaken, match=r"taken: run he-again-2 \(executing\) exists already"):
            await bench_humaneval(bus, problems[1:], NoSandbox(), settings, run_prefix="he-again")
        await check_new_runs(bus, problems, "he-new")  # another prefix is free
