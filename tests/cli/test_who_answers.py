"""Who an approval's answer is recorded as, when `--by` does not say."""

from __future__ import annotations

import os
import pwd

import pytest

from codeyard.cli import _user


def test_the_user_variables_name_who_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "ana")
    monkeypatch.setenv("LOGNAME", "bo")
    assert _user() == "ana"
    monkeypatch.delenv("USER")
    assert _user() == "bo"


def test_without_them_the_account_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container often sets neither: answers were "approved by someone"."""
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.delenv("LOGNAME", raising=False)
    assert _user() == pwd.getpwuid(os.getuid()).pw_name
