"""A test run's output cut down to what the coder needs to fix the failure, and
`missing_program`: a test command that could not start at all is the setup's failure.

From pytest output it keeps the failure sections (the end of each failure, where the assertion
and its location are) and the short test summary with the final counts, and drops the session
header, the progress dots and the warnings. Any other output keeps its first and last lines.
Every cut leaves a `[... N characters cut ...]` line, and the result never exceeds the cap.
"""

from __future__ import annotations

import re
import shlex
from itertools import pairwise

from codeyard.sandbox import RunOutcome

MAX_CHARS = 4_000
MIN_CHARS = 200  # below this not even a marker and a summary line fit
# A failure given less room than this says nothing useful; later ones are left out instead.
MIN_FAILURE_CHARS = 300

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# pytest's section lines: `===== FAILURES =====`, `===== 1 failed, 2 passed in 0.1s =====`.
_SECTION = re.compile(r"^=+ (.+?) =+$", re.MULTILINE)
# One failure inside FAILURES / ERRORS: `_____ test_add _____`.
_FAILURE = re.compile(r"^_{3,} .+? _{3,}$", re.MULTILINE)
# Output a failing test printed or logged: `----- Captured stdout call -----`.
_CAPTURED = re.compile(r"^-{3,} Captured .+? -{3,}$", re.MULTILINE)
_FAILURE_SECTIONS = frozenset({"FAILURES", "ERRORS"})
_SHORT_SUMMARY = "short test summary info"


def trim_test_output(output: str, max_chars: int = MAX_CHARS) -> str:
    """`output` without terminal colours, cut to at most `max_chars` characters."""
    if max_chars < MIN_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_CHARS}, not {max_chars}")
    text = _ANSI_ESCAPE.sub("", output).replace("\r\n", "\n")
    if len(text) <= max_chars:
        return text
    trimmed = _trim_pytest(text, max_chars)
    if trimmed is None:
        trimmed = _head_and_tail(text, max_chars)
    # The pieces are fitted one by one; this keeps the promise whatever they add up to.
    return trimmed if len(trimmed) <= max_chars else _tail(trimmed, max_chars)


# The counts of pytest's final line, with or without the `=====` around it (`-q` drops them).
# Spaces, not `\s`: that crosses lines, and from every line start of a run of blank lines it
# read to the run's end (quadratic: a test printing 30,000 newlines held the tester's event
# loop for 18 s, past its heartbeats).
_COUNTS = re.compile(
    r"^=*[ \t]*(\d+ (passed|failed|errors?|skipped|xfailed|xpassed).*) in [\d.]+s", re.M
)
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|xfailed|xpassed)\b")


def count_tests_run(output: str) -> int:
    """How many tests pytest says it ran (passed, failed, errors, xfail/xpass); 0 if unknown."""
    finals = _COUNTS.findall(_ANSI_ESCAPE.sub("", output))
    if not finals:
        return 0
    return sum(int(number) for number, _ in _COUNT.findall(finals[-1][0]))


def cut_marker(count: int) -> str:
    return f"[... {count} characters cut ...]"


def _trim_pytest(text: str, max_chars: int) -> str | None:
    """The failures and the summary of pytest output, or None if `text` has neither."""
    headers = list(_SECTION.finditer(text))
    if not headers:
        return None
    names = [header.group(1) for header in headers]
    if not _FAILURE_SECTIONS & set(names) and _SHORT_SUMMARY not in names:
        return None
    sections: list[tuple[str, str]] = [("", text[: headers[0].start()])]
    for number, header in enumerate(headers):
        end = headers[number + 1].start() if number + 1 < len(headers) else len(text)
        # pytest's last section line holds the counts ("1 failed, 2 passed in 0.1s").
        kind = "summary" if number == len(headers) - 1 else header.group(1)
        sections.append((kind, text[header.start() : end]))

    summary = "".join(body for kind, body in sections if kind in ("summary", _SHORT_SUMMARY))
    failures = [body for kind, body in sections if kind in _FAILURE_SECTIONS]
    summary = _tail(summary, max_chars // 2 if failures else max_chars)

    # Everything else (header, progress, warnings) becomes one marker per contiguous run.
    pieces: list[str | None] = []  # None: a failure section, trimmed once the room is known
    dropped = 0
    for kind, body in sections:
        if kind in _FAILURE_SECTIONS or kind in ("summary", _SHORT_SUMMARY):
            if dropped:
                pieces.append(cut_marker(dropped) + "\n")
                dropped = 0
            if kind in _FAILURE_SECTIONS:
                pieces.append(None)
        else:
            dropped += len(body)
    if dropped:
        pieces.append(cut_marker(dropped) + "\n")

    room = max_chars - len(summary) - sum(len(piece) for piece in pieces if piece is not None)
    trimmed_failures = []
    for number, section in enumerate(failures):
        share = room // (len(failures) - number)
        trimmed_failures.append(_trim_failure_section(section, share))
        room -= len(trimmed_failures[-1])
    queue = iter(trimmed_failures)
    return "".join(next(queue) if piece is None else piece for piece in pieces) + summary


def _trim_failure_section(section: str, room: int) -> str:
    """A FAILURES / ERRORS section in `room` characters: the first failures, each cut to its
    end, and a marker for the failures that did not fit (the summary still names them)."""
    if len(section) <= room:
        return section
    starts = [match.start() for match in _FAILURE.finditer(section)]
    if not starts:
        return _tail(section, room)
    head = section[: starts[0]]  # the `=== FAILURES ===` line
    failures = [section[a:b] for a, b in zip(starts, [*starts[1:], len(section)], strict=True)]
    omitted_room = len(cut_marker(len(section))) + 1
    room -= len(head) + omitted_room
    fitting = max(0, min(len(failures), room // MIN_FAILURE_CHARS))
    out = [head]
    for number, failure in enumerate(failures[:fitting]):
        out.append(_trim_failure(failure, room // (fitting - number)))
        room -= len(out[-1])
    omitted = sum(len(failure) for failure in failures[fitting:])
    if omitted:
        out.append(cut_marker(omitted) + "\n")
    return "".join(out)


def _trim_failure(failure: str, room: int) -> str:
    """One failure in `room` characters: its title, the end of its traceback (the assertion and
    its location) and, if room is left, the end of the output it captured, which pytest prints
    after the traceback and which is usually the bulk of it."""
    if len(failure) <= room:
        return failure
    title, _, body = failure.partition("\n")
    room -= len(title) + 1
    captured_at = _CAPTURED.search(body)
    if captured_at is None:
        return f"{title}\n{_tail(body, room)}"
    traceback, captured = body[: captured_at.start()], body[captured_at.start() :]
    traceback = _tail(traceback, room - len(cut_marker(len(captured))) - 1)
    return f"{title}\n{traceback}{_tail_under_header(captured, room - len(traceback))}"


def _tail_under_header(text: str, limit: int) -> str:
    """Like `_tail`, but keeping the first line (a `--- Captured stdout call ---` header) when
    there is room for it."""
    if len(text) <= limit:
        return text
    header, _, rest = text.partition("\n")
    kept = _tail(rest, limit - len(header) - 1)
    if kept:
        return f"{header}\n{kept}"
    return _tail(text, limit)


def _tail(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` characters, after a marker if anything was cut;
    "" when not even the marker fits."""
    if len(text) <= limit:
        return text
    room = limit - len(cut_marker(len(text))) - 1
    if room < 0:
        return ""
    start = len(text) - room
    # Start at a line when one begins early enough: half a line reads as noise.
    newline = text.find("\n", start - 1, start + room // 2)
    if newline != -1:
        start = newline + 1
    return cut_marker(start) + "\n" + text[start:]


def _head_and_tail(text: str, limit: int) -> str:
    """The first quarter and the last three quarters of the room; the end of a run's output
    says how it ended, the start what it was."""
    room = limit - len(cut_marker(len(text))) - 2
    head = text[: room // 4]
    line_end = head.rfind("\n")
    if line_end >= len(head) // 2:
        head = head[: line_end + 1]
    tail = _tail_plain(text, room - len(head))
    separator = "" if head.endswith("\n") or not head else "\n"
    marker = cut_marker(len(text) - len(head) - len(tail))
    return f"{head}{separator}{marker}\n{tail}"


def _tail_plain(text: str, room: int) -> str:
    if room <= 0:
        return ""
    start = len(text) - room
    newline = text.find("\n", start - 1, start + room // 2)
    return text[newline + 1 :] if newline != -1 else text[start:]


# What the sandbox's /bin/sh says of a program it cannot run: dash (Debian's), bash as sh and
# busybox. Only its own lines count (a script's lines start with the script's name), and only
# with its exit status for that, 127 or 126.
_SHELL_REFUSED = re.compile(
    r"^(?:/bin/)?sh: (?:(?:line )?\d+: )?(?P<program>.+?): "
    r"(?:(?:command )?not found|Permission denied)$",
    re.MULTILINE,
)


# What Python says, and all it says, when `python -m MODULE` finds no MODULE (exit code 1).
_NO_MODULE = re.compile(r"(?P<python>\S*python[\d.]*): No module named (?P<module>[\w.]+)")


def missing_program(command: str, outcome: RunOutcome) -> str:
    """The program of the test command line `command` that the sandbox's shell could not run
    (not installed in the sandbox, or not executable), or "" when the command ran.

    That is the setup's problem, not the change's: sent back to the coder as a test failure it
    would use up every attempt. A program a test script runs is the tests' business, so only
    one named on the command line itself counts; so does the module of `python -m MODULE`
    when Python finds none (pytest not installed where the sandbox's Python looks)."""
    if outcome.killed_by_limit:
        return ""
    try:
        words = shlex.split(command)
    except ValueError:  # the shell read it; its own message names the program
        words = command.split()
    if outcome.exit_code == 1 and (unknown := _NO_MODULE.fullmatch(outcome.output.strip())):
        modules = {after for before, after in pairwise(words) if before == "-m"}
        return f"python -m {unknown['module']}" if unknown["module"] in modules else ""
    if outcome.exit_code not in (126, 127):
        return ""
    for refused in _SHELL_REFUSED.finditer(outcome.output):
        if refused["program"] in words:
            return refused["program"]
    return ""
