"""Brand names as name variants of their ingredient (rules/valuesets/brand-names.yaml).

Merged into the medication names of text-matches.yaml before the terminology is built, so a
brand-only display ("Lasix 40mg") matches its ingredient by the same name fallback as any name
variant: recorded as a fallback (`ingredient-name-fallback` / `text`), never as a code match.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .content_schema import TextMatches


class BrandName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=2)
    source: str = Field(min_length=10)
    """The RxNorm relation that shows the brand is of this ingredient alone."""


class BrandNames(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brand_names: dict[str, list[BrandName]]


def with_brand_names(text_matches: TextMatches, brands: BrandNames) -> TextMatches:
    """The text matches with each brand added to its ingredient's medication names (a concept
    that is no medication concept is refused when the terminology is built)."""
    names = {concept: list(found) for concept, found in text_matches.medication_names.items()}
    for concept, listed in brands.brand_names.items():
        known = names.setdefault(concept, [])
        known += [brand.name for brand in listed if brand.name not in known]
    return text_matches.model_copy(update={"medication_names": names})
