"""Text an agent wrote, shown on a terminal: its control and bidi characters as escapes."""

from __future__ import annotations

import sys
from unicodedata import category

import pytest

from codeyard.terminal_text import html_text, page_safe, quoted_detail, terminal_safe


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("pytest -q", "pytest -q"),
        ("é ✓ 日本語\tcolumn", "é ✓ 日本語\tcolumn"),  # letters of any script, and tabs, stay
        ("x \x1b]0;owned\x1b\\ y", "x \\x1b]0;owned\\x1b\\ y"),  # a window title (OSC 0)
        ("\x1b[2K\r", "\\x1b[2K\\x0d"),  # erase the line, back to its start
        ("\x9b2J", "\\x9b2J"),  # the one-byte (C1) form of ESC [
        ("\x07\x7f", "\\x07\\x7f"),
        ("evil\u202egpj.exe", "evil\\u202egpj.exe"),  # shown right to left from there
        ("a\u2066b\u2069", "a\\u2066b\\u2069"),
        ("one\ntwo\u2028three", "one\\x0atwo\\u2028three"),  # a line of its own forges one
        ("exec(\u3164)", "exec(\\u3164)"),  # a Hangul filler: a letter that draws a blank
        ("rm\u200b -rf\ufeff", "rm\\u200b -rf\\ufeff"),  # zero-width: two commands, one look
        ("x\U000e0041\U000e007f", "x\\U000e0041\\U000e007f"),  # tags: hidden ASCII
        ("soft\xadhyphen", "soft\\xadhyphen"),
    ],
)
def test_what_would_drive_the_terminal_is_shown_as_its_escape(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_every_format_character_is_shown_as_its_escape() -> None:
    """All of Unicode category Cf (of the Unicode this Python knows), and nothing visible."""
    unseen = [chr(code) for code in range(sys.maxunicode + 1) if category(chr(code)) == "Cf"]
    assert all(terminal_safe(text).startswith("\\") for text in unseen)
    assert terminal_safe("\u2800 \u00a0 \U0001f600 \u2764") == "\u2800 \u00a0 \U0001f600 \u2764"


def test_text_of_several_lines_keeps_its_line_breaks() -> None:
    assert terminal_safe("failed:\n\x1b[31mred\x1b[0m\n", lines=True) == (
        "failed:\n\\x1b[31mred\\x1b[0m\n"
    )


def test_a_detail_is_quoted_whole_on_one_line() -> None:
    assert quoted_detail("\n pip install requests\ncurl x | sh\n", 100) == (
        "'pip install requests\\ncurl x | sh'"
    )
    assert quoted_detail("ls \u202e", 100) == "'ls \\u202e'"
    assert quoted_detail("exec(\u3164)", 100) == "'exec(\\u3164)'"  # printable, to repr


def test_a_detail_cut_says_how_much_is_left_out() -> None:
    assert quoted_detail("x" * 1234, 10) == (
        "'xxxxxxxxxx' ... (1,224 more characters: `codeyard approvals --json`)"
    )
    # a decided check is no longer among the approvals: the run's events have it whole
    assert quoted_detail("x" * 11, 10, "codeyard logs --json r1") == (
        "'xxxxxxxxxx' ... (1 more character: `codeyard logs --json r1`)"
    )


def test_a_page_keeps_line_breaks_and_crlf_but_shows_a_lone_carriage_return() -> None:
    assert page_safe("a\r\nb\rc\u202ed\x1b[0m\te\n") == "a\r\nb\\x0dc\\u202ed\\x1b[0m\te\n"
    assert html_text("<b>\u2066</b>") == "&lt;b&gt;\\u2066&lt;/b&gt;"
