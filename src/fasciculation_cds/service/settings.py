"""Service configuration (pydantic-settings): a YAML/JSON file, overridden by environment
variables prefixed FASCICULATION_CDS_ (nested with `__`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class TrustedIssuer(BaseModel):
    """An EHR allowed to call the service, and where its signing keys are."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASCICULATION_CDS_",
                                      env_nested_delimiter="__", extra="forbid")

    audience: str = Field("http://127.0.0.1:8080/cds-services",
                          description="This service's URL: the JWT `aud` it requires.")
    issuers: list[TrustedIssuer] = Field(default_factory=list)
    fhir_servers: list[str] = Field(default_factory=list,
                                    description="FHIR base URLs the service may call (SSRF).")
    fhir_timeout_seconds: float = 10.0
    fhir_max_pages: int = 10
    max_request_bytes: int = 2_000_000
    clock_skew_seconds: int = 60
    feedback_database_url: str = "sqlite:///fasciculation-cds-feedback.db"
    log_level: str = "info"
    dev_insecure: bool = False
    rules_dir: Path | None = None
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])

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
