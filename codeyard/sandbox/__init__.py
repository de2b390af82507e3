"""Contained execution of generated code and tests: the `Sandbox` protocol and its backends.

    sandbox = default_sandbox(Settings())  # raises SandboxUnavailable, never runs unsandboxed
    outcome = await sandbox.run(workdir, ["python", "-m", "pytest", "-q"], Limits(wall_seconds=120))

Backends: `DockerSandbox` (a throwaway container; `codeyard.sandbox.docker`), `BwrapSandbox`
(bubblewrap namespaces; `codeyard.sandbox.bwrap`) and `ProcessSandbox` (rlimits only, no
isolation, refused without an explicit opt-in; `codeyard.sandbox.process`). Each promises the
same: no network, writes confined to the workdir (seen at `SANDBOX_WORKDIR`), uid 65534 without
privileges, the `Limits`; the process backend only the limits. `default_sandbox` picks one from
the settings: docker, else bwrap, else refuse (`codeyard.sandbox.selection`). See
../shared/ARCHITECTURE.md ("Safety").
"""

from codeyard.sandbox.bwrap import BwrapSandbox
from codeyard.sandbox.docker import DockerSandbox
from codeyard.sandbox.limits import GiB, Limits, MiB
from codeyard.sandbox.process import ProcessSandbox
from codeyard.sandbox.protocol import (
    SANDBOX_WORKDIR,
    SHELL,
    LimitName,
    RunOutcome,
    Sandbox,
    SandboxUnavailable,
    shell_command,
)
from codeyard.sandbox.selection import default_sandbox

__all__ = [
    "SANDBOX_WORKDIR",
    "SHELL",
    "BwrapSandbox",
    "DockerSandbox",
    "GiB",
    "LimitName",
    "Limits",
    "MiB",
    "ProcessSandbox",
    "RunOutcome",
    "Sandbox",
    "SandboxUnavailable",
    "default_sandbox",
    "shell_command",
]
