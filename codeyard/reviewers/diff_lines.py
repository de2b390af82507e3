"""Which lines of which files a unified diff adds: where a reviewer's comments belong."""

from __future__ import annotations

import re

_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def added_lines(patch: str) -> dict[str, set[int]]:
    """New-file line numbers added by `patch` (git's unified diff), by path. Deleted files are
    left out; a file that only loses lines maps to an empty set.

    Hunk headers give how many lines each hunk spans, and the lines are counted against them,
    so file content that looks like a diff header (`+++ x`, `@@ ...`) is never taken for one.
    """
    added: dict[str, set[int]] = {}
    path: str | None = None
    old_left = new_left = 0
    line = 0
    for text in patch.splitlines():
        if old_left > 0 or new_left > 0:
            marker = text[:1]
            if marker == "+":
                if path is not None:
                    added[path].add(line)
                line += 1
                new_left -= 1
            elif marker == "-":
                old_left -= 1
            elif marker == "\\":  # "\ No newline at end of file"
                pass
            else:  # context (a blank context line may have lost its leading space)
                line += 1
                old_left -= 1
                new_left -= 1
            continue
        if text.startswith("+++ "):
            path = _new_path(text[4:])
            if path is not None:
                added.setdefault(path, set())
        elif hunk := _HUNK.match(text):
            old_count, start, new_count = hunk.groups()
            old_left = int(old_count) if old_count is not None else 1
            new_left = int(new_count) if new_count is not None else 1
            line = int(start)
    return added


def _new_path(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = _unquote(name[1:-1])
    return name[2:] if name.startswith("b/") else name


def _unquote(quoted: str) -> str:
    """Undo git's C-style quoting of unusual names (octal escapes are UTF-8 bytes)."""
    try:
        raw = quoted.encode("latin-1").decode("unicode_escape").encode("latin-1")
        return raw.decode("utf-8")
    except UnicodeError:
        return quoted
