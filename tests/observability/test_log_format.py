"""The two log formats, and `up`'s numbering of its children's metrics ports."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from codeyard.observability import log_format
from codeyard.observability.context import working_on
from codeyard.observability.log_format import JsonFormatter, WorkTextFormatter, configure_logging
from codeyard.observability.ports import metrics_port_of, with_metrics_ports
from codeyard.supervisor import ChildSpec


def record(message: str, exc_info: bool = False) -> logging.LogRecord:
    failure = sys.exc_info() if exc_info else None
    return logging.LogRecord("codeyard.test", logging.WARNING, __file__, 1, message, (), failure)


def test_json_lines_name_the_work_only_while_it_is_handled() -> None:
    with working_on("r1", "t1", 3):
        inside = json.loads(JsonFormatter().format(record("busy")))
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert (inside["run_id"], inside["task_id"], inside["attempt"]) == ("r1", "t1", 3)
    assert (inside["level"], inside["logger"], inside["message"]) == (
        "WARNING",
        "codeyard.test",
        "busy",
    )
    assert "run_id" not in outside


def test_json_lines_carry_the_traceback() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        line = json.loads(JsonFormatter().format(record("failed", exc_info=True)))
    assert "ValueError: broken" in line["exception"]


def test_text_lines_put_the_work_before_the_message() -> None:
    with working_on("r1", "t1", 2):
        inside = WorkTextFormatter().format(record("busy"))
    outside = WorkTextFormatter().format(record("idle"))
    assert inside.endswith(" codeyard.test WARNING [r1/t1#2] busy")
    assert outside.endswith(" codeyard.test WARNING idle")


def test_text_lines_name_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` interleaves the lines of all its children."""
    monkeypatch.setattr(log_format, "_process", "worker-coder")
    assert " worker-coder codeyard.test WARNING idle" in WorkTextFormatter().format(record("idle"))


def test_an_llm_call_is_no_line_of_its_own() -> None:
    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    handlers, levels = root.handlers[:], (root.level, httpx.level)
    try:
        configure_logging("text")
        assert not httpx.isEnabledFor(logging.INFO)
        assert logging.getLogger("codeyard.x").isEnabledFor(logging.INFO)
    finally:  # as the rest of the session had it
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        httpx.setLevel(levels[1])


def test_text_lines_show_escapes_instead_of_obeying_them() -> None:
    """A message quoting an agent's words (a command, a title) reaches a terminal."""
    line = WorkTextFormatter().format(record("gate: run_command 'ls \x1b]0;owned\x07'\nnext"))
    assert line.endswith(" WARNING gate: run_command 'ls \\x1b]0;owned\\x07'\nnext")


def test_a_traceback_shows_escapes_instead_of_obeying_them() -> None:
    """The message was made safe, and the traceback after it, which quotes what raised (a
    model's words, git's stderr), was not: `\x1b]0;...` retitled the terminal."""
    try:
        raise ValueError("model said \x1b]0;owned\x07 \x1b[2J")
    except ValueError:
        line = WorkTextFormatter().format(record("handler failed", exc_info=True))
    assert "\x1b" not in line
    assert "ValueError: model said \\x1b]0;owned\\x07 \\x1b[2J" in line
    assert "Traceback (most recent call last):\n" in line  # its lines kept


def test_up_numbers_metrics_ports_by_service_and_never_past_65535() -> None:
    children = [ChildSpec(name, ["true"], {"A": "1"}) for name in ("coordinator", "x", "review")]
    assert with_metrics_ports(children, 0) == children
    numbered = with_metrics_ports(children, 65530)
    assert [metrics_port_of(child) for child in numbered] == [65530, 0, 65535]  # x: slot 6
    assert all(child.env and child.env["A"] == "1" for child in numbered)


def test_the_services_every_up_runs_keep_their_metrics_ports_whatever_else_runs() -> None:
    """Numbered in the order of the children, every service after the dashboard moved when it
    was left out (its port taken), and the tester and reviewer with each coder more."""

    def ports(*names: str) -> dict[str, int]:
        children = [ChildSpec(name, ["true"]) for name in names]
        return {c.name: metrics_port_of(c) for c in with_metrics_ports(children, 9000)}

    services = ("coordinator", "safety-gate", "planner")
    full = ports(*services, "dashboard", "coder-0", "tester", "review")
    fewer = ports(*services, "coder-0", "coder-1", "tester", "review")
    assert full == {
        "coordinator": 9000,
        "safety-gate": 9001,
        "dashboard": 9002,
        "planner": 9003,
        "tester": 9004,
        "review": 9005,
        "coder-0": 9006,
    }
    assert fewer == {k: v for k, v in full.items() if k != "dashboard"} | {"coder-1": 9007}


def test_metrics_ports_pass_over_the_ports_up_uses_otherwise() -> None:
    """A safety gate given the dashboard's port made the dashboard fail to listen, which stopped
    every service; one given NATS's served nothing, and NATS was scraped in its place."""
    children = [ChildSpec(name, ["true"]) for name in ("coordinator", "safety-gate", "dashboard")]
    placed = with_metrics_ports(children, 8699, taken={8700, 8702})
    assert [metrics_port_of(child) for child in placed] == [8699, 8701, 8703]
