"""Service configuration (pydantic-settings): a YAML/JSON file, overridden by environment
variables prefixed FASCICULATION_CDS_ (nested with `__`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .smart_settings import SmartSettings

APP_NAME = "fasciculation-cds"


class TrustedIssuer(BaseModel):
    """An EHR allowed to call the service, and where its signing keys are."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None


def default_feedback_database() -> Path:
    """A per-user data folder (XDG_DATA_HOME on Linux), never the folder `serve` starts in."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "feedback.db"


def _default_feedback_url() -> str:
    return f"sqlite:///{default_feedback_database()}"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASCICULATION_CDS_",
                                      env_nested_delimiter="__", extra="forbid")

    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="The URL the EHR reaches the service at, without `/cds-services`. A JWT's "
                    "`aud` must be the exact URL of the endpoint called under it.")
    issuers: list[TrustedIssuer] = Field(default_factory=list)
    fhir_servers: list[str] = Field(default_factory=list,
                                    description="FHIR base URLs the service may call (SSRF).")
    fhir_timeout_seconds: float = Field(10.0, gt=0)
    fhir_max_pages: int = Field(10, ge=1)
    fhir_max_bytes: int = Field(
        20_000_000, ge=1_000,
        description="The most bytes one hook call may read: its request body (the prefetch) "
                    "and every FHIR answer and page together.")
    fhir_max_requests: int = Field(
        50, ge=1, description="The most FHIR reads one hook call may make, pages included.")
    fhir_max_concurrency: int = Field(
        4, ge=1, description="The most FHIR reads one hook call has in flight at once.")
    fhir_reuse_seconds: float = Field(
        30.0, ge=0, description="How long order-select reuses the FHIR reads of the same "
                                "hookInstance, patient, server and token (0: never).")
    incomplete_record: Literal["card", "412"] = Field(
        "card", description="A record that cannot be read completely: one warning card saying "
                            "so (`card`), or a 412 error (`412`).")
    request_deadline_seconds: float = Field(
        20.0, gt=0, description="The most time one hook call may take, FHIR paging included.")
    request_read_timeout_seconds: float = Field(
        10.0, gt=0, description="The most time a client may take to send a request's headers, "
                                "and again its body.")
    max_request_bytes: int = 2_000_000
    clock_skew_seconds: int = Field(60, ge=0)
    max_token_lifetime_seconds: int = Field(
        300, ge=1, description="A JWT's `exp` may be at most this long after its `iat`.")
    feedback_database_url: str = Field(default_factory=_default_feedback_url)
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as one JSON object per line (`serve "
                            "--log-format json`).")
    metrics: bool = Field(True, description="Prometheus metrics at /metrics (counts and "
                                            "timings only: no patient data).")
    dev_insecure: bool = False
    rules_dir: Path | None = None
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    api_docs: bool = Field(
        False, description="Serve /docs and /redoc (their pages load scripts from a CDN).")
    evaluation_workers: int = Field(
        1, ge=1, description="Threads that evaluate records; each owns its own rule engine.")
    evaluation_processes: int = Field(
        0, ge=0, description="Worker processes that evaluate records instead of threads "
                             "(0: threads); each loads the rules and compiles its own engine.")
    smart: SmartSettings = Field(default_factory=SmartSettings,
                                 description="The SMART app that shows the full summary.")

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment variables override the config file (passed as init values)
        return env_settings, init_settings, dotenv_settings, file_secret_settings


def load_settings(config: Path | None = None, **overrides: Any) -> ServiceSettings:
    """The config file, overridden by the environment, overridden by command-line flags."""
    data: dict[str, Any] = {}
    if config is not None:
        data = yaml.safe_load(config.read_text()) or {}
    settings = ServiceSettings(**data)
    return settings.model_copy(update=overrides) if overrides else settings
