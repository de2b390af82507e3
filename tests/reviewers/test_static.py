"""The static reviewer on real git repositories: ruff and bandit in the sandbox, no LLM."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import msgspec

from codeyard.reviewers.handler import PluginHandler
from codeyard.reviewers.static import StaticReviewer
from codeyard.sandbox import SANDBOX_WORKDIR, BwrapSandbox, Limits, RunOutcome
from codeyard.schemas import Patch, RepoRef, ReviewComment, ReviewRequest, ReviewResult, TaskSpec
from codeyard.workspace.git import git
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


# --- what the patch and the sandboxed run cannot do to the reviewer ---------------------------

FLAWED = "import json\nimport os\n\n\ndef run(command: str) -> None:\n    os.system(command)\n"
FAKE_TOOL = (  # writes an empty report where the real tool would write its findings
    "import sys\n\n"
    "flag = '--output-file' if '--output-file' in sys.argv else '--output'\n"
    "with open(sys.argv[sys.argv.index(flag) + 1], 'w') as report:\n"
    "    report.write('[]' if flag == '--output-file' else '{\"results\": []}')\n"
)


async def test_a_ruff_py_or_bandit_py_in_the_patch_does_not_stand_in_for_the_tool(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    # `python -m ruff` run in the checkout would import the patch's ruff.py: findings vanish.
    files = {"ruff.py": FAKE_TOOL, "bandit.py": FAKE_TOOL, "calc/shell.py": FLAWED}

    result = await review(sandbox, sample_repo, files)

    assert not result.approved
    assert {("calc/shell.py", 1, "ruff F401"), ("calc/shell.py", 6, "bandit B605")} <= located(
        result
    )


class TamperingSandbox:
    """The real sandbox, except that after ruff's run a second sandboxed command replaces the
    report with what `script` makes of it (argv[1]): what anything running in the workdir, a
    subverted tool say, could leave there for the host to read."""

    name = "bwrap"

    def __init__(self, sandbox: BwrapSandbox, script: str) -> None:
        self.sandbox = sandbox
        self.script = "import os, sys\nos.remove(sys.argv[1])\n" + script
        self.planted: Path | None = None  # the report's path on the host, once replaced

    async def run(
        self,
        workdir: Path,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome:
        outcome = await self.sandbox.run(workdir, command, limits, env)
        if command[list(command).index("-m") + 1] == "ruff":
            report = command[list(command).index("--output-file") + 1]
            await self.sandbox.run(workdir, ["python", "-c", self.script, report], limits)
            self.planted = workdir / PurePosixPath(report).relative_to(SANDBOX_WORKDIR)
        return outcome


async def test_a_report_replaced_by_a_fifo_fails_the_review_without_blocking_the_loop(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    tampering = TamperingSandbox(sandbox, "os.mkfifo(sys.argv[1])\n")
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.1)

    beating = asyncio.create_task(heartbeat())
    with release_a_blocked_reader(tampering):
        result = await StaticReviewer(tampering).review(
            request(sample_repo, patch_of(sample_repo, {"calc/extra.py": "import json\n"}))
        )
    beating.cancel()
    beats.append(time.monotonic())  # the end too: a fast review may see a single beat

    assert tampering.planted is not None
    assert not result.approved
    [comment] = result.comments
    assert comment.text.startswith("ruff could not check the change (ruff.json is not a regular")
    assert max(b - a for a, b in itertools.pairwise(beats)) < 5.0  # the loop never stopped


@contextmanager
def release_a_blocked_reader(tampering: TamperingSandbox, after: float = 20.0) -> Iterator[None]:
    """Only for a host that blocks opening the FIFO (the bug this guards against): after
    `after` seconds, write an empty report into it, so the test fails instead of hanging."""
    done = threading.Event()

    def release() -> None:
        deadline = time.monotonic() + after
        while not done.wait(0.2):
            if time.monotonic() < deadline or tampering.planted is None:
                continue
            try:  # succeeds only while a reader is waiting on the FIFO
                fd = os.open(tampering.planted, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.write(fd, b"[]")
            os.close(fd)
            return

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


async def test_a_report_replaced_by_a_symlink_to_a_host_file_is_not_read(
    sandbox: BwrapSandbox, sample_repo: Path, tmp_path: Path
) -> None:
    host_file = tmp_path / "host.json"  # outside the sandbox: only the host can follow the link
    host_file.write_text("[]")
    tampering = TamperingSandbox(sandbox, f"os.symlink({str(host_file)!r}, sys.argv[1])\n")

    result = await StaticReviewer(tampering).review(
        request(sample_repo, patch_of(sample_repo, {"calc/extra.py": "import json\n"}))
    )

    assert tampering.planted is not None
    assert not result.approved
    [comment] = result.comments
    assert comment.text.startswith("ruff could not check the change (ruff.json cannot be opened")


async def test_a_report_over_the_size_limit_fails_the_review(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    imports = "".join(f"import module_{n}\n" for n in range(20))  # 20 findings: a long report

    result = await StaticReviewer(sandbox, max_report_bytes=1000).review(
        request(sample_repo, patch_of(sample_repo, {"calc/extra.py": imports}))
    )

    assert not result.approved
    [comment] = result.comments
    assert re.match(
        r"(ruff|bandit) could not check the change \(\w+\.json is \d+ bytes, over the limit of "
        r"1000\)",
        comment.text,
    )


async def test_a_patch_writing_ruff_s_configuration_does_not_switch_its_checks_off(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    """`select = []` in a ruff.toml of the patch's own was obeyed: an undefined name passed."""
    files = {
        "ruff.toml": "[lint]\nselect = []\n",
        "calc/extra.py": "def f():\n    return nowhere\n",
    }
    result = await review(sandbox, sample_repo, files)
    assert not result.approved
    assert located(result) == {("calc/extra.py", 2, "ruff F821")}


async def test_the_tester_s_lines_in_a_coder_s_file_neither_hide_nor_shift_its_findings(
    sandbox: BwrapSandbox, sample_repo: Path
) -> None:
    """The tester's tests, applied after the patch, put three imports at the top of the coder's
    new file: the coder's undefined name moved three lines down, and the findings reported were
    the tester's unused imports, at the lines the coder's patch named."""
    coders = "\n\n\n\n\ndef f():\n    return nowhere\n"  # the name on line 7
    patch = patch_of(sample_repo, {"calc/t.py": coders})
    commit(sample_repo, {"calc/t.py": coders})  # as the tester saw it: the patch applied
    tests = patch_of(sample_repo, {"calc/t.py": "import os\nimport re\nimport sys\n" + coders})
    git(sample_repo, "reset", "--quiet", "--hard", "HEAD~1")
    asked = msgspec.structs.replace(request(sample_repo, patch), tests=Patch(text=tests))

    result = await StaticReviewer(sandbox).review(asked)

    assert located(result) == {("calc/t.py", 7, "ruff F821")}
