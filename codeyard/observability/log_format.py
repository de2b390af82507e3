"""Log output of the services: text for a terminal, or one JSON object per line for a log
pipeline (`CODEYARD_LOG_FORMAT=json`).

A JSON line has `ts` (ISO 8601, UTC), `level`, `logger`, `message`, `process` (the service:
`coordinator`, `safety-gate`, `worker-coder`, ...), `run_id`/`task_id`/`attempt` while a work
item or result is being handled, and `exception` when there is a traceback.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from codeyard.observability.context import current_work
from codeyard.terminal_text import terminal_safe

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(service)s %(name)s %(levelname)s %(work)s%(message)s"
# Libraries whose INFO lines are noise in a service's log: httpx logs every LLM call.
QUIETED = ("httpx", "httpcore")

_process = "codeyard"


def set_process_name(name: str) -> None:
    """Which service this process is, for every later log line."""
    global _process
    _process = name


def process_name() -> str:
    return _process


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": _process,
            "pid": record.process,
        }
        work = current_work()
        if work is not None:
            line |= {"run_id": work.run_id, "task_id": work.task_id, "attempt": work.attempt}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class WorkTextFormatter(logging.Formatter):
    """The plain format: the service (`up` interleaves its children's lines), and
    `[run/task#attempt] ` in front of the message when known, with control characters in the
    message shown as escapes (line breaks kept)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # For a terminal: what a message quotes of a run (an agent's words) may hold escapes.
        record.message = terminal_safe(record.message, lines=True)
        work = current_work()
        # record.__dict__ rather than an attribute: LogRecord declares no such field
        record.__dict__["work"] = f"[{work.run_id}/{work.task_id}#{work.attempt}] " if work else ""
        record.__dict__["service"] = _process
        return super().formatMessage(record)

    # A traceback quotes what raised (model output, git's stderr): shown as escapes too.
    def formatException(self, ei: Any) -> str:
        return terminal_safe(super().formatException(ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return terminal_safe(super().formatStack(stack_info), lines=True)


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Logs on stderr in `log_format`, replacing any handlers configured before."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else WorkTextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIETED:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
