"""The first character of a setting that cannot be in it (a secret sent in a header, a URL),
named so that a person finds it without the value being shown."""

from __future__ import annotations

import unicodedata


def first_odd_character(text: str, *, ascii_only: bool) -> str | None:
    """The first character of `text` that is whitespace, a control character, not printable,
    or (`ascii_only`) not ASCII, with its place: "U+00A0 (no-break space) at character 7 of
    7"; None when there is none."""
    for index, character in enumerate(text):
        odd = character.isspace() or not character.isprintable()
        if odd or (ascii_only and not character.isascii()):
            return f"{_named(character)} at character {index + 1} of {len(text)}"
    return None


def _named(character: str) -> str:
    name = unicodedata.name(character, "").lower()
    if not name:
        control = unicodedata.category(character) == "Cc"
        name = "a control character" if control else "a character with no name"
        name = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}.get(character, name)
    return f"U+{ord(character):04X} ({name})"
