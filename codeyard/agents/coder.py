"""The coder: a task, its files and earlier feedback in, a patch that applies cleanly out."""

from __future__ import annotations

import asyncio
import hashlib

from codeyard.agents.asking import answered_by, ask_model, told_again
from codeyard.agents.edits import EditError, apply_edits
from codeyard.agents.outputs import CodeOutput
from codeyard.agents.prompt_context import describe_feedback, describe_task, quote_files
from codeyard.agents.prompt_templates import render_prompt
from codeyard.agents.working_copy import blind_writes, read_files, shown_whole, working_copy
from codeyard.bus.worker import GiveUp
from codeyard.llm import LLMClient
from codeyard.schemas import CodeRequest, CodeResult, Patch, Result, Usage, WorkItem

EDIT_ANSWERS = 3
# The largest patch, in bytes (UTF-8): one over 64 KiB goes through the object store, but the
# safety gate reads the whole diff of a merge in one message (1 MiB by default), beside the
# tester's tests (at most 64 KiB).
MAX_PATCH_BYTES = 700_000


class Coder:
    def __init__(self, llm: LLMClient) -> None:
        self.llm = llm

    async def __call__(self, item: WorkItem) -> Result:
        if not isinstance(item, CodeRequest):
            raise GiveUp(f"the coder does not handle {type(item).__name__}")
        async with working_copy(item.repo) as root:
            files = await asyncio.to_thread(read_files, root, item.task.files)
            whole = shown_whole(files)
            messages = render_prompt(
                "coder",
                goal=item.goal,
                task=describe_task(item.task),
                files=quote_files(files),
                feedback=describe_feedback(item.feedback),
            )
            usage = Usage()
            model = ""  # the model of the last answer
            problem = ""
            told_nothing_changes = False
            for _ in range(EDIT_ANSWERS):
                completion = await ask_model(
                    self.llm,
                    "coder",
                    messages,
                    CodeOutput,
                    tool_name="submit_edits",
                    tool_description="Submit the file edits that carry out the task.",
                    spent=usage,
                    model=model,
                )
                usage = usage + completion.usage
                model = answered_by(completion)
                blind = await asyncio.to_thread(blind_writes, root, completion.value.edits, whole)
                if blind:
                    # Shown now (as much as the prompt may hold): the model wrote them unseen
                    # (not named in the task), or saw only their start.
                    unseen = await asyncio.to_thread(read_files, root, blind)
                    whole |= shown_whole(unseen)
                    problem = (
                        f"{', '.join(blind)}: a file that exists and that you were not shown "
                        "whole, so a write of the whole file would delete what you did not see; "
                        "change it with replace edits"
                    )
                    messages = told_again(
                        messages,
                        completion.value,
                        f"Edits refused: {problem}. As it is now:\n\n{quote_files(unseen)}",
                    )
                    continue
                try:
                    applied = await asyncio.to_thread(apply_edits, root, completion.value.edits)
                except EditError as exc:
                    problem = str(exc)
                    messages = told_again(messages, completion.value, f"Edits refused: {exc}")
                    continue
                if not applied.diff and not told_nothing_changes:
                    # Edits that write what is there already: a slip more often than a task
                    # found done, which the model may then say by answering the same again
                    # (merged as an empty commit).
                    told_nothing_changes = True
                    problem = "the edits change nothing: every file stays as it is"
                    messages = told_again(
                        messages,
                        completion.value,
                        f"{problem}. Make the change the task asks for; if the files already "
                        "do what it asks, submit the same edits again and say so in the summary",
                    )
                    continue
                encoded = applied.diff.encode()
                if len(encoded) > MAX_PATCH_BYTES:
                    too_large = (
                        f"the patch is {len(encoded)} bytes, over {MAX_PATCH_BYTES}: too large for "
                        "the safety gate to read in one message; split the task"
                    )
                    raise GiveUp(too_large, usage=usage, model=model)
                digest = hashlib.sha256(encoded).hexdigest()
                return CodeResult(
                    patch=Patch(text=applied.diff, sha256=digest),
                    summary=completion.value.summary,
                    usage=usage,
                    model=model,
                )
        raise GiveUp(
            f"no edits that apply in {EDIT_ANSWERS} answers; the last: {problem}",
            usage=usage,
            model=model,
        )
