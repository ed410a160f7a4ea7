"""The card a call answers with when the record could not be read completely
(`incomplete_record: card`): one warning naming every part that failed, and never a clinical
card beside it. Many EHRs show a 412 as "no recommendations", which reads as a clean chart; a
partial record can hide a newer normal result as well as a newer abnormal one, so no finding is
drawn from it either."""

from __future__ import annotations

import re

from ..presentation import RULES_SYSTEM
from .cards import SOURCE_LABEL, card_uuid
from .models import Card, CodingOut, Indicator, Source

TOPIC = "service.record-incomplete"
TITLE = "Twitching assessment not available"
SUMMARY = "Twitching assessment not available: the record could not be read completely"
MAX_PARTS = 20
MAX_PART_CHARS = 300
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>#+!|~])")  # ( ) make no link without [ ]


def _plain(text: str) -> str:
    """A failure message as literal text in Markdown (it can hold prefetch keys the EHR
    chose), on one line and bounded."""
    flat = " ".join(text.split())
    if len(flat) > MAX_PART_CHARS:
        flat = flat[:MAX_PART_CHARS - 1] + "…"
    return _MARKDOWN.sub(r"\\\1", flat)


def incomplete_card(parts: list[str], card_key: str) -> Card:
    shown = [f"- {_plain(part)}" for part in parts[:MAX_PARTS]]
    if len(parts) > MAX_PARTS:
        shown.append(f"- and {len(parts) - MAX_PARTS} more")
    detail = "\n".join([
        "The service could not read the whole record, so it shows no twitching findings for "
        "this patient now: a missing part can hide a newer normal result as well as a newer "
        "abnormal one.", "", "**What could not be read, and why**", "", *shown, "",
        "Open the chart again to retry. If this keeps happening, the service's FHIR settings "
        "(allow-list, page and size limits) need attention."])
    return Card(uuid=card_uuid(card_key, TOPIC), summary=SUMMARY, indicator=Indicator.warning,
                detail=detail,
                source=Source(label=SOURCE_LABEL,
                              topic=CodingOut(system=RULES_SYSTEM, code=TOPIC, display=TITLE)))
