"""fhir.resources validation of what the rules read, with the work a population repeats done once.

Thousands of resources of a population share a shape: the same elements, and the same values in
all but a few of them (a potassium result repeats its status, code and reference range; its
id, subject, time and value differ). Once a resource of a shape has passed full validation, a
resource of the same shape needs only its differing elements validated, each against its
element's own type annotation: the model-level checks (unknown elements, required elements,
one choice per `[x]`, no null in a list) depend only on which elements are present and on the
values shared with the resource that passed.

Only a pass is ever cached. Whatever fails on the short path is validated in full again, so a
problem is reported exactly as full validation words it (`tests/test_fhir_validation.py` checks
the two paths agree on generated resources).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

# Elements whose values differ from one resource to the next (identity, subject, time, value);
# every other element is part of the shape. A list-valued one is left in the shape.
VARYING_ELEMENTS = frozenset({
    "id", "subject", "patient", "birthDate",
    "effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued",
    "valueQuantity", "valueString", "valueInteger", "valueBoolean", "valueDateTime",
    "valueTime", "valuePeriod", "valueRatio", "valueRange", "valueSampledData",
    "onsetDateTime", "onsetPeriod", "onsetAge", "onsetRange", "onsetString",
    "abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange",
    "abatementString", "abatementBoolean", "recordedDate",
    "authoredOn", "dispenseRequest", "medicationReference", "dateAsserted",
    "performedDateTime", "performedPeriod", "performedString", "performedAge",
    "performedRange",
})
_SHAPES_KEPT = 16_384  # a population has a few hundred; the bound is for hostile input


class ShapeValidator:
    """Validates parsed resources with fhir.resources (R4 through the R4B models)."""

    def __init__(self) -> None:
        self._shapes: set[bytes] = set()

    def validate(self, resource: Mapping[str, Any]) -> None:
        """Raises ValueError (unknown type) or pydantic's ValidationError, as full validation
        of `resource` would."""
        resource_type = str(resource.get("resourceType"))
        model = get_fhir_model_class(resource_type)  # ValueError for an unknown type
        shape, varying = _shape(resource)
        if shape is not None and shape in self._shapes:
            try:
                for key, value in varying:
                    _element_adapter(resource_type, key).validate_python(value)
                return
            except (ValidationError, TypeError, ValueError, KeyError):
                pass  # full validation says what is wrong, in its own words
        model.model_validate(resource)
        if shape is not None:
            if len(self._shapes) >= _SHAPES_KEPT:
                self._shapes.clear()
            self._shapes.add(shape)


def _shape(resource: Mapping[str, Any]) -> tuple[bytes | None, list[tuple[str, Any]]]:
    """Which elements are present and the values of those that are not expected to vary (None
    when the short path does not apply: a null at the top, or a value that is not plain JSON,
    which only the Python API can pass); and the varying elements."""
    varying: list[tuple[str, Any]] = []
    shared: dict[str, Any] = {}
    for key, value in resource.items():
        if value is None:
            return None, varying
        if key in VARYING_ELEMENTS and not isinstance(value, list):
            varying.append((key, value))
        else:
            shared[key] = value
    described = [sorted(key for key, _ in varying), shared]
    try:
        shape = orjson.dumps(described, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None, varying
    # orjson writes NaN and infinities as null, and dates, UUIDs and enums as strings: a value
    # that does not read back as itself could pass for a different one, so it has no shape
    return (shape if orjson.loads(shape) == described else None), varying


@functools.cache
def element_fields(resource_type: str) -> Mapping[str, FieldInfo]:
    """The type's elements by their JSON name (`_name` for a primitive's extension), as the
    R4B model declares them; ValueError for an unknown type."""
    return {field.alias or name: field
            for name, field in get_fhir_model_class(resource_type).model_fields.items()}


@functools.cache
def _element_adapter(resource_type: str, element: str) -> TypeAdapter[Any]:
    """The element's type as the resource model declares it (KeyError: no such element, which
    a shape that passed full validation cannot hold)."""
    annotation = element_fields(resource_type)[element].annotation
    if annotation is None:
        raise KeyError(element)
    return TypeAdapter(annotation)
