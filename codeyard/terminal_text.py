"""`terminal_safe`: text that came from a run (an LLM's task titles, commands, reasons; commit
subjects) made safe to show on a terminal, or to a person deciding on it.

rich strips only BEL, BS, VT, FF and CR, and passes ESC on: a task title holding `\\x1b]0;...`
retitled the window, and a command waiting for approval that held `\\x1b[42D` moved the cursor
back over its own start, so that the approvals table showed `pytest -q` for a download piped
into `sh`. Bidi controls (U+202E...) show characters in another order than they run in. Every
such character is shown as its escape instead (`\\x1b`, `\\u202e`); a line break too, unless the
text may hold several lines, as a line of its own forges one more. `html_text` does the same
for the dashboard's pages and the HTML report, where a diff's bidi controls reordered the lines
a person approves a merge from.
"""

from __future__ import annotations

import re
from html import escape

_TAB, _NEWLINE = 0x09, 0x0A
# Bidi marks, embeddings, overrides and isolates; the Unicode line and paragraph separators.
_LAYOUT = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROL = (*range(0x20), 0x7F, *range(0x80, 0xA0), *_LAYOUT)


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ONE_LINE = {code: _escape(code) for code in _CONTROL if code != _TAB}
_LINES = {code: escaped for code, escaped in _ONE_LINE.items() if code != _NEWLINE}


def terminal_safe(text: str, *, lines: bool = False) -> str:
    """`text` with every control, bidi and line-separating character shown as its escape;
    with `lines`, line breaks (\\n) are kept."""
    return text.translate(_LINES if lines else _ONE_LINE)


_CR = 0x0D
_LONE_CR = re.compile(r"\r(?!\n)")
_IN_A_PAGE = {code: escaped for code, escaped in _LINES.items() if code != _CR}


def page_safe(text: str) -> str:
    """`text` as `terminal_safe(text, lines=True)` shows it, for an HTML page: a carriage
    return before a line break is kept too (a diff of a file with CRLF line ends), a lone one
    is shown as its escape (a browser breaks the line there, forging one more)."""
    return _LONE_CR.sub(r"\\x0d", text.translate(_IN_A_PAGE))


def html_text(text: str) -> str:
    """`text` escaped for HTML (element content or a quoted attribute), shown `page_safe`."""
    return escape(page_safe(text))


def quoted_detail(detail: str, limit: int) -> str:
    """A command (or other detail) a person is asked about, quoted on one line with its escapes
    (a line break shows as \\n: a command's later lines run too), up to `limit` characters,
    saying how many more there are."""
    whole = detail.strip()
    shown = repr(whole[:limit])
    if len(whole) > limit:
        shown += f" ... ({len(whole) - limit:,} more characters: `codeyard approvals --json`)"
    return shown
