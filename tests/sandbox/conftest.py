"""The bubblewrap sandbox, built once; tests that need it skip when it cannot run here."""

from __future__ import annotations

import pytest

from codeyard.sandbox import BwrapSandbox, SandboxUnavailable


@pytest.fixture(scope="session")
def sandbox() -> BwrapSandbox:
    try:
        sandbox = BwrapSandbox()
        sandbox.probe()
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    return sandbox
