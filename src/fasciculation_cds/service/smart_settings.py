"""Settings of the SMART on FHIR app that shows the full summary (`smart:` in the config file,
FASCICULATION_CDS_SMART__... in the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class SmartSettings(BaseModel):
    """The app as registered with the EHR: its client id (public client, PKCE), optionally a
    secret (confidential client), and how long a launch stays usable."""

    enabled: bool = Field(True, description="Serve the app and add its link to every card.")
    client_id: str = Field("fasciculation-cds", min_length=1,
                           description="The client id the EHR registered the app under.")
    client_secret: SecretStr | None = Field(
        None, description="Only for an EHR that registered the app as a confidential client.")
    session_seconds: int = Field(
        900, ge=1, le=86_400,
        description="How long a launch's session lasts; the summary then needs a new launch.")
    max_sessions: int = Field(1_000, ge=1, description="Sessions kept at once (oldest dropped).")
    cookie_secret: SecretStr | None = Field(
        None, description="Signs the session cookie; unset: a random key per process (sessions "
                          "live in memory anyway).")
    cookie_same_site: Literal["lax", "strict", "none"] = Field(
        "lax", description="`none` (cookie then Secure) for an EHR that opens apps in an "
                           "iframe of another site; `lax` for a new window or tab.")
    openid: bool = Field(False, description="Also ask for `openid fhirUser`.")
