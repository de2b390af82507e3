"""Which handler serves which role."""

from __future__ import annotations

from codeyard.agents.coder import Coder
from codeyard.agents.planner import Planner
from codeyard.agents.reviewer import Reviewer
from codeyard.agents.tester import Tester
from codeyard.bus.gate_client import GateClient
from codeyard.bus.subjects import check_role
from codeyard.bus.worker import Handler
from codeyard.config import Settings
from codeyard.llm import LLMClient
from codeyard.sandbox import Sandbox, default_sandbox

AGENT_ROLES = ("planner", "coder", "tester", "review")


def role_handler(
    role: str, llm: LLMClient, gate: GateClient, sandbox: Sandbox | None = None
) -> Handler:
    """The built-in agent for `role`; `review.<name>` roles are plugins and not built in."""
    check_role(role)
    if role == "planner":
        return Planner(llm)
    if role == "coder":
        return Coder(llm)
    if role == "tester":
        return Tester(llm, sandbox or default_sandbox(Settings()), gate)
    if role == "review":
        return Reviewer(llm)
    raise ValueError(f"{role} is a plugin reviewer; run it with its plugin, not as a built-in")
