"""Choosing the sandbox backend: `default_sandbox(settings)`.

`CODEYARD_SANDBOX` (`Settings.sandbox`) picks it:

- `auto` (default): docker when its engine answers and the sandbox image exists, else bwrap
  when bubblewrap can build a sandbox here, else `SandboxUnavailable` listing what was tried
  and why each failed. Never the process backend.
- `docker` / `bwrap`: that backend, or `SandboxUnavailable` saying why it cannot run.
- `process`: rlimits only, no isolation; refused unless `CODEYARD_ALLOW_UNSANDBOXED=1` too.

Nothing here ever falls back to running commands unsandboxed on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from codeyard.config import Settings
from codeyard.sandbox.bwrap import BwrapSandbox
from codeyard.sandbox.docker import DockerSandbox
from codeyard.sandbox.process import ProcessSandbox, unsandboxed_refusal
from codeyard.sandbox.protocol import Sandbox, SandboxUnavailable

log = logging.getLogger(__name__)
# Settings that choose docker's engine or image: set, docker was wanted, and its absence is news.
_DOCKER_SETTINGS = {
    "docker_host": "CODEYARD_DOCKER_HOST",
    "sandbox_image": "CODEYARD_SANDBOX_IMAGE",
}


def default_sandbox(settings: Settings | None = None, *, bwrap: Path | None = None) -> Sandbox:
    """The backend `settings.sandbox` asks for (default: `Settings()`, from the environment),
    checked to work here (this blocks while a probe container or bubblewrap runs once). `bwrap`
    overrides where bubblewrap is looked for.

    Raises `SandboxUnavailable` saying why and how to fix it.
    """
    settings = settings or Settings()
    choice = settings.sandbox
    if choice == "process":
        if not settings.allow_unsandboxed:
            opt_in = "set CODEYARD_ALLOW_UNSANDBOXED=1 as well as CODEYARD_SANDBOX=process"
            raise SandboxUnavailable(unsandboxed_refusal(opt_in))
        return ProcessSandbox(opt_in=True)
    tried: list[str] = []
    if choice in ("auto", "docker"):
        try:
            return _docker(settings)
        except SandboxUnavailable as exc:
            if choice == "docker":
                raise
            tried.append(f"docker: {exc}")
    try:
        sandbox = _bwrap(bwrap)
    except SandboxUnavailable as exc:
        if choice == "bwrap":
            raise
        tried.append(f"bwrap: {exc}")
    else:
        if tried:  # (a typo in the image's name changed the isolation, with nothing said)
            chosen = [
                name
                for field, name in _DOCKER_SETTINGS.items()
                if field in settings.model_fields_set
            ]
            if chosen:
                verb = "are" if len(chosen) > 1 else "is"
                log.warning(
                    "bubblewrap sandbox instead of docker although %s %s set; %s",
                    " and ".join(chosen),
                    verb,
                    tried[0],
                )
            else:  # the usual case on a machine without docker: one short line
                log.info(
                    "bubblewrap sandbox (docker is not available here; CODEYARD_SANDBOX=docker "
                    "says why)"
                )
                log.debug("docker not used: %s", tried[0])
        return sandbox
    raise SandboxUnavailable(
        "no sandbox available to run generated code (CODEYARD_SANDBOX=auto tried docker, then "
        "bwrap):\n- " + "\n- ".join(tried)
    )


def _docker(settings: Settings) -> DockerSandbox:
    sandbox = DockerSandbox(docker_host=settings.docker_host, image=settings.sandbox_image)
    sandbox.probe()
    return sandbox


def _bwrap(bwrap: Path | None) -> BwrapSandbox:
    sandbox = BwrapSandbox(bwrap=bwrap)
    sandbox.probe()
    return sandbox
