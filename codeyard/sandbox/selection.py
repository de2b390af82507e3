"""Choosing the sandbox backend.

Issue 5 plans the automatic order docker -> bwrap -> refuse, overridable in config, plus an
explicit opt-in `process` backend (rlimits only). Only the bwrap backend exists so far, so
`default_sandbox` returns it or refuses; it never falls back to running commands unsandboxed.
"""

from __future__ import annotations

from codeyard.sandbox.bwrap import BwrapSandbox
from codeyard.sandbox.protocol import Sandbox, SandboxUnavailable


def default_sandbox() -> Sandbox:
    """The bubblewrap sandbox, checked to work here (this blocks while bwrap runs once).

    Raises `SandboxUnavailable` saying why and how to fix it (e.g. install bubblewrap) when it
    cannot run or cannot contain a command on this machine.
    """
    try:
        sandbox = BwrapSandbox()
        sandbox.probe()
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(
            f"no sandbox available to run generated code: {exc}. (The docker backend of "
            "issue 5 is not built yet.)"
        ) from exc
    return sandbox
