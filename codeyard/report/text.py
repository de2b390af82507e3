"""How times, durations and usage read in a report, the same in Markdown and HTML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from codeyard.schemas.model import Usage


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def how_long(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    seconds = max(duration.total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h {minute:02d}m {second:02d}s" if hours else f"{minute}m {second:02d}s"


def tokens(usage: Usage) -> str:
    return (
        f"{usage.total_tokens:,} (prompt {usage.prompt_tokens:,}, "
        f"completion {usage.completion_tokens:,}) in {usage.calls:,} calls"
    )


def cost(usage: Usage) -> str:
    return f"${usage.cost_usd:.4f}"


def models(names: tuple[str, ...]) -> str:
    return ", ".join(names) or "-"


def first_line(text: str, limit: int = 120) -> str:
    """One line of at most `limit` characters, for table cells."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
