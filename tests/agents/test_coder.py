"""The coder against the scripted LLM, over real HTTP, in a real repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.agents.coder import Coder
from codeyard.agents.working_copy import MAX_FILE_CHARS
from codeyard.bus.worker import GiveUp
from codeyard.llm import OpenAIClient
from codeyard.schemas import CodeRequest, CodeResult, RepoRef, TaskSpec
from codeyard.testing.openai_script import parse_script
from codeyard.testing.openai_server import ScriptedOpenAI
from tests.llm.scenario import settings
from tests.repositories import one_commit_repo


async def test_a_file_shown_in_part_is_not_written_whole(tmp_path: Path) -> None:
    """The prompt shows the start of a large file; a model writing it back whole, as shown,
    deleted the rest. Refused, it is asked again, and its replace edit keeps the rest."""
    lines = [f"value_{n} = {n}\n" for n in range(MAX_FILE_CHARS // 10)]
    repo = one_commit_repo(tmp_path / "repo", {"big.py": "".join(lines)})
    task = TaskSpec(id="t1", title="rename", files=["big.py"])
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    whole = {"kind": "write", "path": "big.py", "content": "value_0 = 'zero'\n"}
    replace = {
        "kind": "replace",
        "path": "big.py",
        "search": "value_0 = 0\n",
        "replace": "value_0 = 'zero'\n",
    }
    answers = [{"arguments": {"summary": "s", "edits": [edit]}} for edit in (whole, replace)]
    script = parse_script([{"tool": "submit_edits", "replies": answers}])
    async with ScriptedOpenAI(script) as server, OpenAIClient(settings(server.base_url)) as client:
        result = await Coder(client)(request)
        asked_again = str(server.requests[1].body["messages"][-1]["content"])

    assert "big.py: a file that exists and that you were not shown whole" in asked_again
    assert isinstance(result, CodeResult)
    assert "-value_0 = 0\n+value_0 = 'zero'\n" in result.patch.text
    assert "-value_1 = 1" not in result.patch.text  # the rest is kept


async def test_a_patch_too_large_in_bytes_for_the_gate_to_read_gives_up(tmp_path: Path) -> None:
    """The limit counted characters: 250,000 CJK characters (750,000 bytes) passed it, and the
    merge's check, the diff in one message, could not be sent to the safety gate."""
    repo = one_commit_repo(tmp_path / "repo", {"README.md": "# r\n"})
    task = TaskSpec(id="t1", title="translate", files=["notes.md"])
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    write = {"kind": "write", "path": "notes.md", "content": "中" * 250_000 + "\n"}
    script = parse_script(
        [{"tool": "submit_edits", "replies": [{"arguments": {"summary": "s", "edits": [write]}}]}]
    )
    async with ScriptedOpenAI(script) as server, OpenAIClient(settings(server.base_url)) as client:
        with pytest.raises(GiveUp, match=r"the patch is 7\d{5} bytes, over 700000"):
            await Coder(client)(request)


@pytest.mark.parametrize("then", ["a change", "the same again"])
async def test_edits_that_change_nothing_are_asked_for_again_once(
    tmp_path: Path, then: str
) -> None:
    """Writing a file as it is made an empty patch, tested, reviewed and merged as the task
    done. The model is told; answering the same again says the task needs no change."""
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    task = TaskSpec(id="t1", title="greet", files=["app.py"])
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    same = {"kind": "write", "path": "app.py", "content": "print('hello')\n"}
    changed = {"kind": "write", "path": "app.py", "content": "print('hi')\n"}
    second = changed if then == "a change" else same
    answers = [{"arguments": {"summary": "s", "edits": [edit]}} for edit in (same, second)]
    script = parse_script([{"tool": "submit_edits", "replies": answers}])
    async with ScriptedOpenAI(script) as server, OpenAIClient(settings(server.base_url)) as client:
        result = await Coder(client)(request)
        asked = len(server.requests)
        asked_again = str(server.requests[1].body["messages"][-1]["content"])

    assert asked == 2
    assert "the edits change nothing" in asked_again
    assert isinstance(result, CodeResult)
    if then == "a change":
        assert "+print('hi')" in result.patch.text
    else:
        assert result.patch.text == ""  # found done: merged as an empty commit


async def test_a_file_the_task_did_not_name_is_shown_before_it_is_written_whole(
    tmp_path: Path,
) -> None:
    """A file not named in the task (or named as `./app.py`, which is not read) was never shown;
    the model's write of it, whole, replaced the 50 lines it had not seen. Refused, the model
    is shown the file, and its replace edit keeps the rest."""
    lines = "".join(f"line_{n} = {n}\n" for n in range(50))
    repo = one_commit_repo(tmp_path / "repo", {"app.py": lines})
    task = TaskSpec(id="t1", title="change line 0", files=["./app.py"])
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    whole = {"kind": "write", "path": "app.py", "content": "line_0 = 'zero'\n"}
    replace = {"kind": "replace", "path": "app.py", "search": "line_0 = 0\n", "replace": "x\n"}
    answers = [{"arguments": {"summary": "s", "edits": [edit]}} for edit in (whole, replace)]
    script = parse_script([{"tool": "submit_edits", "replies": answers}])
    async with ScriptedOpenAI(script) as server, OpenAIClient(settings(server.base_url)) as client:
        result = await Coder(client)(request)
        asked_again = str(server.requests[1].body["messages"][-1]["content"])

    assert "app.py: a file that exists and that you were not shown whole" in asked_again
    assert "line_49 = 49" in asked_again  # shown now
    assert isinstance(result, CodeResult)
    assert "-line_0 = 0\n+x\n" in result.patch.text
    assert "-line_1 = 1" not in result.patch.text


async def test_a_file_shown_whole_may_be_written_whole(tmp_path: Path) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"app.py": "print('hello')\n"})
    task = TaskSpec(id="t1", title="greet", files=["app.py"])
    request = CodeRequest(
        run_id="r1", task_id="t1", goal="g", task=task, repo=RepoRef(path=str(repo))
    )
    write = {"kind": "write", "path": "app.py", "content": "print('hi')\n"}
    new = {"kind": "write", "path": "new.py", "content": "x = 1\n"}  # no file yet: nothing lost
    answer = {"arguments": {"summary": "s", "edits": [write, new]}}
    script = parse_script([{"tool": "submit_edits", "replies": [answer]}])
    async with ScriptedOpenAI(script) as server, OpenAIClient(settings(server.base_url)) as client:
        result = await Coder(client)(request)
        asked = len(server.requests)

    assert asked == 1
    assert isinstance(result, CodeResult)
    assert "+print('hi')" in result.patch.text
    assert "+x = 1" in result.patch.text
