"""The `Sandbox` protocol every backend implements, and what a run reports back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from codeyard.sandbox.limits import Limits

# Where every backend shows the workdir to the command, and the unprivileged uid/gid it runs as
# (65534, "nobody"), so a run looks the same whichever backend ran it.
SANDBOX_WORKDIR = "/workspace"
SANDBOX_UID = 65534

# The shell a command line runs in (`shell_command`): in every backend's root (bwrap binds the
# host's /usr and /bin; Debian's minbase image has dash, which is essential there).
SHELL = "/bin/sh"

# Which limit stopped a run; "" when none did. "memory" and (without a pids cgroup) "pids" are
# best effort: the kernel reports them only as a failed allocation or fork inside the program.
LimitName = Literal["", "wall_time", "cpu", "memory", "pids", "file_size", "open_files", "disk"]


class SandboxUnavailable(RuntimeError):
    """No sandbox can run commands here (backend missing, or it cannot contain a command).

    The message says why and how to fix it. Never fall back to running unsandboxed.
    """


def shell_command(line: str) -> list[str]:
    """The argv that runs the command line `line` as a shell reads it (`&&`, `|`, redirects,
    `$(...)`, `cd`): the way the safety gate reads a command it allows (codeyard.agents.policy),
    so that what runs is what it allowed."""
    return [SHELL, "-c", line]


def checked_request(command: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """`command` as a list; raises ValueError for what no backend can run: a string or empty
    command, a NUL in an argument, an environment name that is empty or holds `=` or a NUL, a
    value holding a NUL. (The docker engine took a NUL for its own failure, and the argument
    came back as a failing command.)"""
    if isinstance(command, str) or not command:
        raise ValueError(f"command must be a non-empty argv list, got {command!r}")
    for position, argument in enumerate(command):
        if "\0" in argument:
            raise ValueError(f"argument {position} of the command holds a NUL character")
    for name, value in (env or {}).items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} cannot name an environment variable")
        if "\0" in value:
            raise ValueError(f"the value of the environment variable {name} holds a NUL")
    return list(command)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """The result of one sandboxed command.

    `exit_code` is the command's exit status, or 128+N when a signal N ended it (as in a shell;
    a run stopped at its wall time reports 137). `output` is stdout and stderr interleaved as
    text, keeping only the last `Limits.output_bytes` with a marker line in front when earlier
    output was dropped.
    """

    exit_code: int
    output: str
    timed_out: bool
    duration_seconds: float
    killed_by_limit: LimitName = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.killed_by_limit


class Sandbox(Protocol):
    """Runs a command inside `workdir` with no network, writes confined to `workdir`, as a
    non-root user without new privileges, within `limits`.

    `command` is an argv list, never a shell string: pass `shell_command(line)` (`/bin/sh -c
    line`) explicitly when a shell is needed. `env` adds to (or overrides) the sandbox's
    minimal environment; nothing of the caller's environment leaks in otherwise. `workdir` must
    be a copy the command may modify; it is visible read-write inside the sandbox.
    """

    name: str

    async def run(
        self,
        workdir: Path,
        command: Sequence[str],
        limits: Limits,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome: ...
