"""The CDS Hooks 2.0 wire types the service reads and writes, as pydantic models.

Requests are checked at the edge (a malformed request is a 400 naming the field); cards are
built as models, so a card that breaks the specification (a summary over 140 characters, an
unknown indicator) fails where it is made instead of reaching an EHR.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY_MAX = 140


class _In(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- requests ----------------------------------------------------------------------------------


class FhirAuthorization(_In):
    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str


class HookRequest(_In):
    hook: str
    hook_instance: str = Field(alias="hookInstance", min_length=1, max_length=200)
    fhir_server: str | None = Field(default=None, alias="fhirServer", max_length=2000)
    fhir_authorization: FhirAuthorization | None = Field(default=None, alias="fhirAuthorization")
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class Coding(_In):
    code: str
    system: str | None = None
    display: str | None = None


class OverrideReasonGiven(_In):
    reason: Coding | None = None
    user_comment: str | None = Field(default=None, alias="userComment", max_length=10_000)


class AcceptedSuggestion(_In):
    id: str


class FeedbackItem(_In):
    card: str = Field(min_length=1, max_length=200)
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[AcceptedSuggestion] = Field(default_factory=list,
                                                           alias="acceptedSuggestions")
    override_reason: OverrideReasonGiven | None = Field(default=None, alias="overrideReason")
    outcome_timestamp: str = Field(alias="outcomeTimestamp", max_length=64)


class FeedbackRequest(_In):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


# --- responses ---------------------------------------------------------------------------------


class Indicator(str, Enum):
    info = "info"
    warning = "warning"
    critical = "critical"


class CodingOut(_Out):
    system: str
    code: str
    display: str | None = None


class Source(_Out):
    label: str
    url: str | None = None
    topic: CodingOut | None = None


class Link(_Out):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"
    app_context: str | None = Field(default=None, alias="appContext")


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resource_id: list[str] | None = Field(default=None, alias="resourceId")


class CardSuggestion(_Out):
    label: str
    uuid: str
    actions: list[Action]


class Card(_Out):
    uuid: str
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX)
    indicator: Indicator
    detail: str | None = None
    source: Source
    suggestions: list[CardSuggestion] | None = None
    selection_behavior: Literal["at-most-one", "any"] | None = Field(
        default=None, alias="selectionBehavior")
    override_reasons: list[CodingOut] | None = Field(default=None, alias="overrideReasons")
    links: list[Link] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
