"""Building blocks of the agent roles: prompts, the LLM's output models and what is done with
them (plan checks, file edits and their diff), repository summaries and trimmed test output.

Everything here is free of the bus and of the LLM client; the role workers combine them.
"""

from codeyard.agents.edits import MAX_FILE_BYTES, AppliedEdits, EditError, apply_edits
from codeyard.agents.failure_report import trim_test_output
from codeyard.agents.outputs import (
    CodeOutput,
    FileEdit,
    PlannedTask,
    PlanOutput,
    ReplaceText,
    ReviewNote,
    ReviewOutput,
    TestOutput,
    WriteFile,
)
from codeyard.agents.plan_check import plan_feedback, plan_problems
from codeyard.agents.prompt_context import (
    bullet_list,
    describe_feedback,
    describe_task,
    fenced,
    quote_files,
)
from codeyard.agents.prompt_templates import (
    TEMPLATE_NAMES,
    PromptError,
    PromptTemplate,
    TemplateName,
    load_template,
    render_prompt,
)
from codeyard.agents.repo_summary import RepoSummary, detect_test_command, summarize_repo
from codeyard.agents.safe_paths import UnsafePath, workspace_path

__all__ = [
    "MAX_FILE_BYTES",
    "TEMPLATE_NAMES",
    "AppliedEdits",
    "CodeOutput",
    "EditError",
    "FileEdit",
    "PlanOutput",
    "PlannedTask",
    "PromptError",
    "PromptTemplate",
    "ReplaceText",
    "RepoSummary",
    "ReviewNote",
    "ReviewOutput",
    "TemplateName",
    "TestOutput",
    "UnsafePath",
    "WriteFile",
    "apply_edits",
    "bullet_list",
    "describe_feedback",
    "describe_task",
    "detect_test_command",
    "fenced",
    "load_template",
    "plan_feedback",
    "plan_problems",
    "quote_files",
    "render_prompt",
    "summarize_repo",
    "trim_test_output",
    "workspace_path",
]
