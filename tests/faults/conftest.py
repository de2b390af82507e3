"""Prints the fault suite's summary table at the end of the session and keeps a copy in
tests/artifacts/faults.txt (CI uploads it; `python -m pytest tests/faults -s` shows it too)."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

from tests.faults.harness import SUMMARY, TABLE_PATH, summary_table


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    if not SUMMARY:  # no fault test ran in this session
        return
    lines = summary_table(SUMMARY)
    terminalreporter.write_sep("=", "fault injection summary")
    for line in lines:
        terminalreporter.write_line(line)
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    TABLE_PATH.write_text("\n".join(lines) + "\n")
