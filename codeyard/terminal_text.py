"""`terminal_safe`: text that came from a run (an LLM's task titles, commands, reasons; commit
subjects) made safe to show on a terminal, or to a person deciding on it.

rich strips only BEL, BS, VT, FF and CR, and passes ESC on: a task title holding `\\x1b]0;...`
retitled the window, and a command waiting for approval that held `\\x1b[42D` moved the cursor
back over its own start, so that the approvals table showed `pytest -q` for a download piped
into `sh`. Bidi controls (U+202E...) show characters in another order than they run in, and
format characters show nothing at all. Every such character is shown as its escape instead
(`\\x1b`, `\\u202e`); a line break too, unless the text may hold several lines, as a line of
its own forges one more. `html_text` does the same
for the dashboard's pages and the HTML report, where a diff's bidi controls reordered the lines
a person approves a merge from.
"""

from __future__ import annotations

import re
from html import escape

_TAB, _NEWLINE = 0x09, 0x0A
# Bidi marks, embeddings, overrides and isolates; the Unicode line and paragraph separators.
_LAYOUT = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
# What draws nothing, or a blank: every format character (Unicode category Cf: zero-width
# spaces and joiners, the soft hyphen, tags...) and every other default-ignorable code point
# (variation selectors, the Hangul fillers). A filler is a letter to JavaScript and Python, so
# `exec(ㅤ)` in a diff read as a harmless blank; two commands differing by a zero-width space
# looked the same.
_UNSEEN = (
    0x00AD,
    0x034F,
    *range(0x0600, 0x0606),
    0x06DD,
    0x070F,
    0x0890,
    0x0891,
    0x08E2,
    0x115F,
    0x1160,
    0x17B4,
    0x17B5,
    *range(0x180B, 0x1810),
    *range(0x200B, 0x200E),
    *range(0x2060, 0x2065),
    *range(0x206A, 0x2070),
    0x3164,
    *range(0xFE00, 0xFE10),
    0xFEFF,
    0xFFA0,
    *range(0xFFF9, 0xFFFC),
    0x110BD,
    0x110CD,
    *range(0x13430, 0x13440),
    *range(0x1BCA0, 0x1BCA4),
    *range(0x1D173, 0x1D17B),
    *range(0xE0000, 0xE1000),
)
_CONTROL = (*range(0x20), 0x7F, *range(0x80, 0xA0), *_LAYOUT, *_UNSEEN)


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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


def quoted_detail(detail: str, limit: int, whole_in: str = "codeyard approvals --json") -> str:
    """A command (or other detail) a person is asked about, quoted on one line with its escapes
    (a line break shows as \\n: a command's later lines run too), up to `limit` characters,
    saying how many more there are and where they are shown: `whole_in`."""
    whole = detail.strip()
    # (repr leaves printable blanks such as the Hangul filler as they are)
    shown = terminal_safe(repr(whole[:limit]))
    if (more := len(whole) - limit) > 0:
        shown += f" ... ({more:,} more character{'s' * (more > 1)}: `{whole_in}`)"
    return shown
