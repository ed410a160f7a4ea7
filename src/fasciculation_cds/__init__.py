"""fasciculation-cds: clinical decision support for muscle twitching, cramps and spasms.

FHIR R4 in, explainable findings out::

    from fasciculation_cds import evaluate
    for assessment in evaluate("patient-bundle.json", as_of="2026-11-24"):
        print(assessment.patient.reference, [f.rule_id for f in assessment.findings])
"""

from ._version import __version__
from .assessment import Assessment, RuleFinding
from .errors import InputError, RuleFileError
from .evaluate import InputProblem, PatientError, evaluate, evaluate_each
from .ruleset import RuleSet, load_rules

__all__ = [
    "Assessment",
    "InputError",
    "InputProblem",
    "PatientError",
    "RuleFileError",
    "RuleFinding",
    "RuleSet",
    "__version__",
    "evaluate",
    "evaluate_each",
    "load_rules",
]
