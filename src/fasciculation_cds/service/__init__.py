"""CDS Hooks 2.0 service: a thin, safe shell around the package's evaluation."""

from .app import create_app
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
