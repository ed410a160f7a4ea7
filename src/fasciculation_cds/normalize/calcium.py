"""Albumin-corrected total calcium (Payne), as derived readings of concept calcium-corrected.

docs/clinical-basis.md, "Albumin-corrected calcium": with the albumin nearest in time within
the window, applied only when that albumin is below the reference (4.0 g/dL); otherwise the measured
total stands, with a note saying why. An implausible albumin, or one sent with a comparator, is
not used. A lab-reported corrected calcium is used only when no measured total of the same time
exists.
"""

from __future__ import annotations

from dataclasses import replace

from ..fhir_time import iso_day
from .common import SECONDS_PER_DAY, Content, Notice
from .labs import ALBUMIN, CORRECTED_CALCIUM, TOTAL_CALCIUM, LabReading


def with_corrected_calcium(
    content: Content, readings: list[LabReading]
) -> tuple[list[LabReading], list[Notice]]:
    """The readings with one calcium-corrected reading added per total calcium, and without
    the lab-reported corrected calcium a measured total of the same time supersedes."""
    albumins, notices = _usable_albumins(content, readings)
    totals = [lab for lab in readings if lab.concept == TOTAL_CALCIUM]
    measured_times = {lab.effective for lab in totals}
    kept = [lab for lab in readings
            if not (lab.concept == CORRECTED_CALCIUM and lab.effective in measured_times)]
    return kept + [_corrected(content, lab, albumins) for lab in totals], notices


def _usable_albumins(
    content: Content, readings: list[LabReading]
) -> tuple[list[LabReading], list[Notice]]:
    constants = content.constants
    usable, notices = [], []
    for lab in readings:
        if lab.concept != ALBUMIN:
            continue
        low, high = constants.plausible_albumin_low, constants.plausible_albumin_high
        if lab.comparator is not None:
            notices.append(Notice(
                "comparator-indeterminate", lab.reference,
                f"albumin {lab.reported} ({lab.reference}) gives a bound, not a value; not used "
                "to correct calcium"))
        elif lab.value < low or (high is not None and lab.value > high):
            hint = " (g/dL sent as g/L?)" if lab.value < low else ""
            notices.append(Notice(
                "albumin-implausible", lab.reference,
                f"albumin {lab.reported} ({lab.reference}) is outside the plausible range for "
                f"its unit{hint}; not used to correct calcium"))
        else:
            usable.append(lab)
    return usable, notices


def _corrected(content: Content, lab: LabReading, albumins: list[LabReading]) -> LabReading:
    constants = content.constants
    window = constants.albumin_window_days * SECONDS_PER_DAY
    near = [a for a in albumins if abs((a.effective - lab.effective).total_seconds()) <= window]
    near.sort(key=lambda a: (abs((a.effective - lab.effective).total_seconds()),
                             -a.effective.timestamp(), a.reference))
    base = replace(lab, concept=CORRECTED_CALCIUM, low=None, high=None, interpretation=None,
                   provenance="measured")
    if not near:
        return replace(base, derived_from=(lab.reference,), note=(
            f"not corrected: no albumin within {constants.albumin_window_days} days of this "
            "calcium"))
    albumin = near[0]
    where = f"{albumin.reference}, {iso_day(albumin.effective)}"
    if albumin.value >= constants.reference_albumin:
        return replace(base, derived_from=(lab.reference, albumin.reference), note=(
            f"as measured: albumin {albumin.reported} ({where}) is not below "
            f"{constants.reference_albumin_text}, so the correction does not apply"))
    value = lab.value + constants.ca_per_albumin * (constants.reference_albumin - albumin.value)
    return replace(base, value=value, derived_from=(lab.reference, albumin.reference),
                   provenance="corrected", measured_value=lab.value,
                   albumin_reported=albumin.reported,
                   note=f"corrected for albumin {albumin.reported} by this package ({where})")
