"""Contained execution of generated code and tests: the `Sandbox` protocol and its backends.

    sandbox = default_sandbox()  # raises SandboxUnavailable, never runs unsandboxed
    outcome = await sandbox.run(workdir, ["python", "-m", "pytest", "-q"], Limits(wall_seconds=120))

See ../shared/ARCHITECTURE.md ("Safety") and `codeyard.sandbox.bwrap` for what is enforced.
"""

from codeyard.sandbox.bwrap import BwrapSandbox
from codeyard.sandbox.limits import GiB, Limits, MiB
from codeyard.sandbox.protocol import (
    SANDBOX_WORKDIR,
    LimitName,
    RunOutcome,
    Sandbox,
    SandboxUnavailable,
)
from codeyard.sandbox.selection import default_sandbox

__all__ = [
    "SANDBOX_WORKDIR",
    "BwrapSandbox",
    "GiB",
    "LimitName",
    "Limits",
    "MiB",
    "RunOutcome",
    "Sandbox",
    "SandboxUnavailable",
    "default_sandbox",
]
