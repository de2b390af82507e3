"""What of the host a sandbox is shown of the interpreter: its installation, nothing around it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from codeyard.sandbox.workdir import python_roots


def test_a_link_to_the_interpreter_does_not_make_its_home_an_installation(tmp_path: Path) -> None:
    """codeyard started as ~/bin/python bound the whole home directory into every sandbox."""
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / ".ssh").mkdir()
    (home / "bin" / "python").symlink_to(sys.executable)

    roots = python_roots(home / "bin" / "python")

    assert home not in roots
    installation = Path(os.path.realpath(sys.executable)).parent.parent
    assert installation in roots or installation.is_relative_to("/usr")  # (always shown)


def test_a_virtual_environment_is_shown_whole(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    (venv / "bin" / "python").symlink_to(sys.executable)

    assert venv in python_roots(venv / "bin" / "python")
