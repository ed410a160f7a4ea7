"""Text that came from a record, made harmless for the place it is shown.

Every display, free text, quote, unit and reference in a record is written by someone else: in a
card's Markdown it must not become a link, an image or HTML; in a terminal it must not be an
escape sequence; in XHTML it must be escaped. Each output calls the one function for its kind.
"""

from __future__ import annotations

import re

# C0 and C1 control characters and DEL (tab, newline and carriage return are folded to spaces
# first): an escape sequence in a terminal, invalid in XML, a line break that starts a Markdown
# block (a heading, a list, a quote) in the middle of a card.
# Bidirectional overrides and zero-width characters are removed too: they can make shown text
# read differently from what it is.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e"
                      r"\u2066-\u2069\ufeff]")
_BREAKS = re.compile(r"[\t\n\r\u2028\u2029\x85]+")
# Characters with a meaning in CommonMark or GitHub Flavored Markdown inline text: emphasis,
# code, links and images (`[`, `]`), raw HTML and autolinks (`<`), entities (`&`), tables (`|`),
# strikethrough (`~`), headings (`#`), and the backslash itself. Parentheses alone make no link.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>&|~#])")
# GFM's extended autolinks need no brackets: `https://…`, `www.…`, `name@host`. An escaped `:` or
# `.` or `@` breaks them (the autolink scanner no longer sees the scheme, `www.` or the address).
_AUTOLINK = re.compile(r"(?i)(:)(?=//)|(?<=www)(\.)|(@)")
# What starts a block when it starts a line: a list item, a setext underline, an ordered item.
_LINE_START = re.compile(r"^([-+=])|^(\d+)([.)])")


def plain(text: str) -> str:
    """One line of plain text: line breaks and tabs as spaces, control characters removed."""
    return CONTROL.sub("", _BREAKS.sub(" ", text))


def markdown_text(text: str) -> str:
    """`text` as literal Markdown inline text: it renders as the same characters, never as a
    link, image, emphasis, code or HTML, in CommonMark and GitHub Flavored Markdown alike."""
    escaped = _MARKDOWN.sub(r"\\\1", plain(text))
    escaped = _AUTOLINK.sub(lambda m: "\\" + m.group(0), escaped)
    return _LINE_START.sub(lambda m: f"\\{m.group(1)}" if m.group(1)
                           else f"{m.group(2)}\\{m.group(3)}", escaped)


def terminal_text(text: str) -> str:
    """`text` for a terminal: no escape sequence or other control character survives (rich
    `Text` never reads markup, so `[bold]` stays literal)."""
    return plain(text)
