"""Albumin-corrected total calcium (Payne), as a derived reading of concept calcium-corrected."""

from __future__ import annotations

from dataclasses import replace

from ..fhir_time import iso_day
from .common import SECONDS_PER_DAY, Content, Notice
from .labs import LabReading


def corrected_calcium(
    content: Content, readings: list[LabReading]
) -> tuple[list[LabReading], list[Notice]]:
    """One calcium-corrected reading per total calcium: corrected, or the total with a note."""
    constants = content.constants
    window = constants.albumin_window_days * SECONDS_PER_DAY
    notices = []
    albumins = []
    for lab in readings:
        if lab.concept != "albumin":
            continue
        if lab.value < constants.plausible_albumin_low:
            notices.append(Notice(
                "albumin-implausible", lab.reference,
                f"albumin {lab.original_value} {lab.original_unit} ({lab.reference}) is "
                "implausibly low for its unit (g/dL sent as g/L?); not used to correct "
                "calcium"))
            continue
        albumins.append(lab)
    corrected = []
    for lab in readings:
        if lab.concept != "calcium-total":
            continue
        near = [a for a in albumins
                if abs((a.effective - lab.effective).total_seconds()) <= window]
        near.sort(key=lambda a: (abs((a.effective - lab.effective).total_seconds()),
                                 -a.effective.timestamp(), a.reference))
        if near:
            albumin = near[0]
            value = lab.value + constants.ca_per_albumin * (
                constants.reference_albumin - albumin.value)
            note = (f"corrected for albumin {albumin.original_value} {albumin.original_unit} "
                    f"({albumin.reference}, {iso_day(albumin.effective)})")
            derived_from: tuple[str, ...] = (lab.reference, albumin.reference)
        else:
            value = lab.value
            note = ("not corrected: no albumin within "
                    f"{constants.albumin_window_days} days of this calcium")
            derived_from = (lab.reference,)
        corrected.append(replace(lab, concept="calcium-corrected", value=value, low=None,
                                 high=None, interpretation=None, derived_from=derived_from,
                                 note=note))
    return corrected, notices
