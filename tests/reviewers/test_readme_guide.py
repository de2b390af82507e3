"""The README's "Write your own reviewer" works as written: the Python example reviews, and the
consumer configuration and the `jq` answer of "From another language" are what codeyard uses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from codeyard.bus.topology import Topology, work_consumer
from codeyard.bus.worker import result_msg_id
from codeyard.reviewers.handler import PluginHandler
from codeyard.reviewers.loading import load_plugin
from codeyard.reviewers.protocol import ReviewerPlugin
from codeyard.schemas import (
    Patch,
    RepoRef,
    Result,
    ReviewRequest,
    ReviewResult,
    TaskSpec,
    decode,
    encode,
)
from codeyard.schemas.export import message_schema
from tests.agents.sample_repo import SAMPLE_FILES
from tests.reviewers.conftest import patch_of


@pytest.fixture
def guide(repo_root: Path) -> str:
    readme = (repo_root / "README.md").read_text()
    start = readme.index("## Write your own reviewer")
    return readme[start : readme.index("\n## ", start + 1)]


def code_blocks(text: str, language: str) -> list[str]:
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.DOTALL | re.MULTILINE)
    return [
        "\n".join(line.removeprefix(indent) for line in body.splitlines())
        for indent, body in blocks
    ]


def request(repo: Path, patch: str) -> ReviewRequest:
    return ReviewRequest(
        run_id="r1",
        task_id="t1",
        attempt=2,
        task=TaskSpec(id="t1", title="a change"),
        patch=Patch(text=patch),
        reviewer="review.lint",
        repo=RepoRef(path=str(repo), snapshot=str(repo)),
    )


async def test_the_python_example_is_a_working_plugin(
    guide: str, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [example] = code_blocks(guide, "python")
    module = types.ModuleType("notodos")
    exec(compile(example, "README.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "notodos", module)
    plugin = load_plugin("notodos:NoTodos")
    assert isinstance(plugin, ReviewerPlugin)
    mul = "\n\ndef mul(a: int, b: int) -> int:\n    return a * b  # TODO\n"
    patch = patch_of(sample_repo, {"calc/ops.py": SAMPLE_FILES["calc/ops.py"] + mul})
    result = await PluginHandler(plugin, "review.notodos")(request(sample_repo, patch))
    assert isinstance(result, ReviewResult)
    assert not result.approved
    assert [(c.path, c.line) for c in result.comments] == [("calc/ops.py", 10)]


def test_the_consumer_configuration_is_codeyards(guide: str) -> None:
    [config] = (json.loads(block) for block in code_blocks(guide, "json"))
    ours: dict[str, Any] = work_consumer("review.lint", Topology()).as_dict()
    assert {key: ours[key] for key in config} == config
    unset = {"name", "idle_heartbeat", "inactive_threshold"}
    assert set(ours) - set(config) <= unset


def test_the_jq_answer_is_a_review_result_for_the_request(guide: str, tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    [session] = code_blocks(guide, "sh")[-1:]
    commands = session[session.index("id=") : session.index("nats pub")]
    sent = request(tmp_path, "")
    script = f"request=$(cat request.json)\n{commands}\nprintf '%s' \"$answer\" > answer.json\n"
    (tmp_path / "request.json").write_bytes(encode(sent))
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    answer = (tmp_path / "answer.json").read_bytes()
    jsonschema.validate(json.loads(answer), message_schema(ReviewResult))
    result = decode(answer, Result)
    assert isinstance(result, ReviewResult)
    assert result.msg_id == result_msg_id(sent.msg_id)
    assert (result.run_id, result.task_id, result.attempt) == ("r1", "t1", 2)
    assert result.trace_id == sent.trace_id
    assert result.reviewer == "review.lint"
    assert "--jetstream" in session
    assert '-H "Nats-Msg-Id:$id" cy.result.review.lint' in session
    assert "nats consumer next CY_WORK review-lint" in session
