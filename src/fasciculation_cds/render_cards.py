"""CDS Hooks cards in the terminal, as `fasciculation-cds hook` shows a service's answer.

Everything a service sends is shown as plain text (never as rich markup): a card is the
service's words, not instructions to the terminal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

STYLE = {"critical": "bold white on red", "warning": "bold black on yellow", "info": "bold cyan"}


def print_cards(console: Console, hook: str, status: int, answer: dict[str, Any]) -> None:
    if status != 200:
        message = answer.get("error") or answer.get("detail") or answer
        console.print(Text(f"{hook}: the service answered {status}: {message}",
                           style="bold red"))
        return
    cards = answer.get("cards") or []
    if not cards:
        console.print(Text(f"{hook}: no cards", style="dim"))
        return
    for card in cards:
        console.print(_panel(card))


def _panel(card: dict[str, Any]) -> Panel:
    indicator = str(card.get("indicator", "info"))
    body = Text()
    body.append(f" {indicator.upper()} ", style=STYLE.get(indicator, "bold"))
    body.append(" " + str(card.get("summary", "")))
    detail = card.get("detail")
    if isinstance(detail, str) and detail.strip():
        body.append("\n\n" + detail.strip())
    for suggestion in card.get("suggestions") or []:
        body.append(f"\n• suggestion: {suggestion.get('label', '')}", style="green")
    for link in card.get("links") or []:
        body.append(f"\n→ {link.get('label', '')}: {link.get('url', '')}", style="blue")
    source = card.get("source") or {}
    topic = (source.get("topic") or {}).get("code")
    title = Text(f"{source.get('label', '')}{f' · {topic}' if topic else ''}")
    return Panel(body, title=title, title_align="left")
