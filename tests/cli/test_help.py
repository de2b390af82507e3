"""What `--help` says, against what the README says."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.processes import codeyard


def test_cancel_help_says_what_the_readme_says_a_cancelled_run_leaves(repo_root: Path) -> None:
    """It said merged tasks stay on the branch codeyard/RUN, which a cancelled run never gets."""
    readme = " ".join((repo_root / "README.md").read_text(encoding="utf-8").split())
    assert "A failed or cancelled run delivers no branch" in readme
    salvage = re.search(r"`(git fetch \S+ HEAD:refs/heads/salvage/RUN)`", readme)
    assert salvage is not None, "the README no longer says how to salvage a run's merged tasks"

    helped = codeyard(os.environ | {"COLUMNS": "200"}, "cancel", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    said = " ".join(helped.stdout.split())
    assert "A cancelled run delivers no branch" in said
    assert salvage.group(1) in said
    assert "stay on the branch" not in said


def test_help_reads_as_paragraphs_at_80_columns() -> None:
    """Docstrings keep their line breaks in rich markup mode: at 80 columns each of their lines
    broke again part-way ("if its" / "events that" / "remain ...")."""
    helped = codeyard(os.environ | {"COLUMNS": "80"}, "logs", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    description = helped.stdout.split("Usage:", 1)[1].split("╭", 1)[0].splitlines()[1:]
    paragraphs = "\n".join(line.rstrip() for line in description).strip().split("\n\n")
    assert len(paragraphs) == 3, paragraphs
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        assert all(len(line) > 60 for line in lines[:-1]), paragraph  # but a paragraph's last


def test_a_command_to_copy_stays_on_a_line_of_its_own() -> None:
    helped = codeyard(os.environ | {"COLUMNS": "80"}, "cancel", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    lines = [line.strip() for line in helped.stdout.splitlines()]
    assert "git fetch CODEYARD_DATA_DIR/runs/RUN/integration HEAD:refs/heads/salvage/RUN" in lines


def test_options_keep_room_for_what_they_do_at_80_columns() -> None:
    """`run`'s options were described in a column 17 characters wide (--test-command took 20
    lines): its --no-approve-* and the 16-digit range of --max-tokens took the room."""
    helped = codeyard(os.environ | {"COLUMNS": "80"}, "run", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    options = helped.stdout.split("Options", 1)[1]
    [described] = [line for line in options.splitlines() if "--approve-plan" in line]
    assert "wait for a person to" in described  # the name, its type, and most of its help


def test_the_version_is_an_option_too() -> None:
    option = codeyard(dict(os.environ), "--version", timeout=60)
    command = codeyard(dict(os.environ), "version", timeout=60)
    assert option.returncode == 0, option.stderr
    assert option.stdout == command.stdout
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", option.stdout)


def test_a_flag_shows_no_value_to_give_it() -> None:
    """typer 0.29 shows `<bool>` beside every flag, as if `--approve-plan true` were asked
    for; its own --help and completion options keep it (they are not ours to name)."""
    helped = codeyard(os.environ | {"COLUMNS": "120"}, "run", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    options = helped.stdout.split("Options", 1)[1].splitlines()
    [approve] = [line for line in options if "--approve-plan" in line]
    [reviewer] = [line for line in options if "--reviewer" in line]
    assert "<" not in approve.split("wait for")[0]
    assert "<name>" in reviewer
    ours = [line for line in options if "<bool>" in line and "--help" not in line]
    assert ours == []
