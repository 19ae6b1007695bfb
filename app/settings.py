"""The service's one typed settings object, read from the environment (prefix ``TRIALSCREEN_``)."""

from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic_settings import BaseSettings, SettingsConfigDict

_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALSCREEN_", frozen=True)

    canonical_base: str = "https://trialscreen.org/fhir"
    """Base of the canonical URLs the service publishes (PlanDefinition, ValueSet, CodeSystem)."""

    criteria_dir: Path = _ROOT / "criteria"
    mappings_dir: Path = _ROOT / "fhir_mappings"

    timezone: str = "UTC"
    """Time zone whose calendar day is "today" when a request gives no as-of date."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted. A large Synthea record is about 7 MB; 64 MiB leaves room for
    long hospital histories while bounding memory per request."""


@lru_cache
def get_settings() -> Settings:
    return Settings()


def zone_of(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)
