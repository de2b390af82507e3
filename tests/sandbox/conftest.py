"""The sandboxes under test, each built once per session. A backend that cannot run here is
skipped with the reason (its `SandboxUnavailable` message).

`sandbox` is parametrized over the isolating backends (docker, bwrap): the containment tests
run against each. `leftovers` lists what a run left on the host: the bwrap backend's run
cgroups, or the docker backend's containers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.sandbox import BwrapSandbox, DockerSandbox, Sandbox, SandboxUnavailable
from codeyard.sandbox.cgroups import RunCgroups
from codeyard.sandbox.docker import LABEL
from tests.sandbox.host import Leftovers

ISOLATING_BACKENDS = ("docker", "bwrap")


@pytest.fixture(scope="session")
def docker_sandbox() -> DockerSandbox:
    try:
        sandbox = DockerSandbox()
        sandbox.probe()
    except SandboxUnavailable as exc:
        pytest.skip(f"docker sandbox unavailable here: {exc}")
    return sandbox


@pytest.fixture(scope="session", params=ISOLATING_BACKENDS)
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    backend: Sandbox = request.getfixturevalue(f"{request.param}_sandbox")
    return backend


@pytest.fixture
def leftovers(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Leftovers:
    """What the runs of this test left behind, to be called after them (must be empty)."""
    if isinstance(sandbox, DockerSandbox):
        return _docker_leftovers(sandbox)
    if isinstance(sandbox, BwrapSandbox):
        return _bwrap_leftovers(sandbox, monkeypatch)
    raise AssertionError(f"no leftover check for {sandbox.name}")


def _docker_leftovers(sandbox: DockerSandbox) -> Leftovers:
    def containers() -> set[str]:
        found = sandbox.client.containers.list(all=True, filters={"label": LABEL})
        return {f"container {c.name}" for c in found}

    before = containers()
    return lambda: sorted(containers() - before)


def _bwrap_leftovers(sandbox: BwrapSandbox, monkeypatch: pytest.MonkeyPatch) -> Leftovers:
    """Records the run cgroups the sandbox creates during the test rather than listing them,
    since other codeyard processes on the host share the parent."""
    created: list[Path] = []
    cgroups = sandbox._cgroups
    if cgroups:
        new_run = cgroups.new_run

        def recording_new_run(
            pids_max: int, memory_max: int | None = None, cpus: float | None = None
        ) -> RunCgroups:
            run = new_run(pids_max, memory_max, cpus)
            created.extend(cgroup.path for cgroup in run.members)
            return run

        monkeypatch.setattr(cgroups, "new_run", recording_new_run)
    return lambda: [f"cgroup {path}" for path in created if path.exists()]
