"""The static reviewer on real git repositories: ruff and bandit in the sandbox, no LLM."""

from __future__ import annotations

from pathlib import Path

from codeyard.reviewers.handler import PluginHandler
from codeyard.reviewers.static import StaticReviewer
from codeyard.sandbox import BwrapSandbox
from codeyard.schemas import Patch, RepoRef, ReviewComment, ReviewRequest, ReviewResult, TaskSpec
from tests.agents.sample_repo import SAMPLE_FILES
from tests.reviewers.conftest import commit, patch_of

OPS = SAMPLE_FILES["calc/ops.py"]


def request(repo: Path, patch: str) -> ReviewRequest:
    return ReviewRequest(
        run_id="r1",
        task_id="t1",
        attempt=1,
        task=TaskSpec(id="t1", title="a change"),
        patch=Patch(text=patch),
        reviewer="review.static",
        repo=RepoRef(path=str(repo), snapshot=str(repo)),
    )


async def review(sandbox: BwrapSandbox, repo: Path, files: dict[str, str]) -> ReviewResult:
    return await StaticReviewer(sandbox).review(request(repo, patch_of(repo, files)))


def located(result: ReviewResult) -> set[tuple[str, int, str]]:
    """(path, line, rule) of each comment; the rule is the word after the tool's name."""
    return {(c.path, c.line, " ".join(c.text.split()[:2]).rstrip(":")) for c in result.comments}


async def test_shell_injection_in_a_new_file_is_flagged_at_its_line(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    shell = "import os\n\n\ndef run(user_input: str) -> None:\n    os.system(user_input)\n"
    result = await review(sandbox, sample_repo, {"calc/shell.py": shell})
    assert not result.approved
    assert located(result) == {("calc/shell.py", 5, "bandit B605")}
    [comment] = result.comments
    assert "shell" in comment.text
    assert "high severity" in comment.text


async def test_eval_and_an_unused_import_added_to_a_file_are_flagged_at_their_lines(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    changed = "import json\n" + OPS + "\n\ndef calc(text: str) -> int:\n    return eval(text)\n"
    result = await review(sandbox, sample_repo, {"calc/ops.py": changed})
    assert not result.approved
    assert located(result) == {
        ("calc/ops.py", 1, "ruff F401"),
        ("calc/ops.py", 11, "bandit B307"),
    }
    assert any("json" in comment.text for comment in result.comments)


async def test_a_clean_patch_is_approved(sandbox: BwrapSandbox, sample_repo: Path) -> None:
    changed = OPS + "\n\ndef mul(a: int, b: int) -> int:\n    return a * b\n"
    result = await review(sandbox, sample_repo, {"calc/ops.py": changed})
    assert result.approved
    assert result.comments == []


async def test_findings_on_lines_the_patch_does_not_add_are_not_the_coders(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    commit(sample_repo, {"calc/ops.py": "import os\n" + OPS})  # already there: not this change
    changed = "import os\n" + OPS + "\n\ndef mul(a: int, b: int) -> int:\n    return a * b\n"
    result = await review(sandbox, sample_repo, {"calc/ops.py": changed})
    assert result.approved, result.comments


async def test_the_repositorys_own_ruff_configuration_decides_the_rules(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    commit(sample_repo, {"ruff.toml": '[lint]\nignore = ["F401"]\n'})
    result = await review(sandbox, sample_repo, {"calc/extra.py": "import json\n"})
    assert result.approved, result.comments


async def test_a_syntax_error_is_reported_where_it_is(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    result = await review(sandbox, sample_repo, {"calc/broken.py": "x = 1\ndef f(:\n"})
    assert not result.approved
    assert {(c.path, c.line) for c in result.comments} == {("calc/broken.py", 2)}


async def test_a_patch_without_python_is_approved_without_a_checkout(
    sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    readme = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-old\n+new\n"
    missing = tmp_path / "not-a-repo"  # would fail the review if it were looked at
    result = await StaticReviewer(sandbox).review(request(missing, readme))
    assert result.approved


async def test_a_patch_that_does_not_apply_is_sent_back(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    stale = "--- a/calc/ops.py\n+++ b/calc/ops.py\n@@ -1,2 +1,2 @@\n-def nothing():\n+x = 1\n y\n"
    handler = PluginHandler(StaticReviewer(sandbox), "review.static")
    result = await handler(request(sample_repo, stale))
    assert isinstance(result, ReviewResult)
    assert result.reviewer == "review.static"
    assert not result.approved
    [comment] = result.comments
    assert comment == ReviewComment(text=comment.text)
    assert comment.text.startswith("the patch does not apply")
