"""The service's one typed settings object, read from the environment (prefix ``TRIALSCREEN_``)."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_ROOT = Path(__file__).resolve().parents[2]


class CdsClient(BaseModel):
    """An EHR allowed to call the CDS Hooks service (one entry per JWT issuer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str
    jwks_url: str | None = None
    """Where the issuer's public keys are published (fetched, cached, refreshed on unknown kid)."""
    jwks: dict[str, Any] | None = None
    """Or the keys themselves (a JWK Set)."""
    jku_allowlist: tuple[str, ...] = ()
    """``jku`` header values accepted for this issuer; any other jku is refused, never fetched."""
    fhir_bases: tuple[str, ...] = ()
    """FHIR base URLs this issuer may send as ``fhirServer``; any other is never called."""
    tenant: str | None = None
    """If set, the JWT's ``tenant`` claim must equal it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALSCREEN_", frozen=True)

    canonical_base: str = "https://trialscreen.org/fhir"
    """Base of the canonical URLs the service publishes (PlanDefinition, ValueSet, CodeSystem)."""

    criteria_dir: Path = _ROOT / "criteria"
    mappings_dir: Path = _ROOT / "fhir_mappings"

    database_url: str = f"sqlite:///{_ROOT / 'var' / 'trialscreen.db'}"
    """Where screenings are kept: an SQLite file by default, PostgreSQL in production."""

    public_base_url: str = "http://127.0.0.1:8000"
    """How clients reach this service: absolute links in CDS cards, and the ``aud`` a CDS
    client's JWT must carry."""

    # --- who may call the REST API ------------------------------------------------------------
    auth_issuer: str | None = None
    """Issuer of the OAuth2 access tokens callers present (their ``iss``)."""
    auth_jwks_url: str | None = None
    """Where that issuer publishes its keys."""
    auth_jwks: dict[str, Any] | None = None
    """Or its keys themselves (a JWK Set)."""
    auth_audience: str | None = None
    """Required ``aud``; defaults to public_base_url."""
    auth_algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES384")
    rate_limit_per_minute: int = 120
    """Requests each client may make per minute on the protected API (0: no limit)."""
    rate_limit_burst: int = 30

    # --- CDS Hooks -------------------------------------------------------------------------------
    cds_clients: tuple[CdsClient, ...] = ()
    """EHRs allowed to call the CDS Hooks service (JSON list)."""
    allow_unauthenticated: bool = False
    """Development only: serve the REST API and CDS Hooks calls without a token (a warning is
    logged at start); fhirServer is then used only when it equals ehr_base_url."""
    cds_fetch_budget: float = 0.35
    """Seconds a hook call may spend fetching what prefetch lacked before it answers with a
    'screening pending' card (CDS Hooks asks for answers on the order of 500 ms)."""
    cds_show_ineligible: bool = False
    """Also show a card when the patient is ineligible."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins (e.g. the CDS Hooks sandbox) allowed to call the service."""

    timezone: str = "UTC"
    """Time zone whose calendar day is "today" when a request gives no as-of date."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted. A large Synthea record is about 7 MB; 64 MiB leaves room for
    long hospital histories while bounding memory per request."""

    # --- the EHR's FHIR server, for $screen by patient id ---------------------------------------
    ehr_base_url: str | None = None
    """FHIR base URL of the EHR. Unset: patients are read from the bundled demo records."""
    ehr_auth: Literal["none", "bearer", "smart"] = "none"
    ehr_token: SecretStr | None = None
    """Static bearer token (ehr_auth=bearer)."""
    smart_client_id: str | None = None
    smart_private_key: SecretStr | None = None
    """PEM private key for the SMART Backend Services client assertion (ehr_auth=smart)."""
    smart_key_id: str | None = None
    smart_algorithm: Literal["RS384", "ES384"] = "RS384"
    smart_scopes: str = (
        "system/Patient.rs system/Observation.rs system/Condition.rs "
        "system/MedicationRequest.rs system/MedicationAdministration.rs system/Immunization.rs "
        "system/Procedure.rs system/AllergyIntolerance.rs"
    )
    ehr_headers: dict[str, str] = {}
    """Extra headers on every EHR request (e.g. Epic-Client-ID; Prefer: handling=strict)."""
    ehr_medication_types: tuple[str, ...] = ("MedicationRequest", "MedicationAdministration")
    """Medication resource types fetched (MedicationStatement is not a US Core search)."""
    ehr_page_size: int = 500
    """_count asked per page. Each page waits for the one before, so a patient's few hundred
    procedures at 100 a page cost five sequential round trips; a server with a lower maximum
    (Oracle: 200) returns fewer and links the rest. Searches are not narrowed by code instead:
    history read closed-world needs every entry, including those named only in words."""
    ehr_max_pages: int = 50
    """Pages followed per search before the search counts as incomplete."""
    ehr_codes_per_search: int = 40
    """Observation codes per search, keeping URLs short enough for every EHR."""
    ehr_connect_timeout: float = 5.0
    ehr_read_timeout: float = 20.0
    ehr_deadline: float = 30.0
    """Seconds one screening may spend fetching, retries included."""
    ehr_max_attempts: int = 4
    """Tries per request on 429, 502-504 and connection errors."""
    ehr_max_response_bytes: int = 32 * 1024 * 1024
    """Largest single EHR response read."""
    terminology_url: str | None = None
    """Optional FHIR terminology server (base URL) asked ``ValueSet/$validate-code`` for codes the
    shipped value set expansions do not hold (app/ehr/terminology.py); unset, they decide."""
    terminology_budget: float = 3.0
    """Seconds one screening may spend asking the terminology server."""

    # --- how clients reach the service (absolute links) -----------------------------------------
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of reverse proxies whose ``Forwarded`` / ``X-Forwarded-*``
    headers say which base URL the client used. From anyone else those headers are ignored.
    Links are built from the request unless public_base_url is set explicitly (an override)."""
    auth_token_url: str | None = None
    """The OAuth2 token endpoint where callers get access tokens (published in the
    CapabilityStatement's SMART security block and in .well-known/smart-configuration)."""
    auth_authorize_url: str | None = None
    """The OAuth2 authorization endpoint, if the issuer offers user-facing launches."""

    # --- hardening (issue 12) -----------------------------------------------------------------
    refused_per_minute: int = 60
    """Refused requests (401, 403, malformed) each client address may make per minute before
    it gets 429 and nothing more is written (0: no limit)."""
    refused_burst: int = 30
    metrics_enabled: bool = True
    """Serve Prometheus metrics at GET /metrics. Turn off, or keep the path off the public
    proxy, in production: they show request rates and routes."""
    cross_tenant_clients: tuple[str, ...] = ()
    """Client ids (the token's client_id, azp or sub) that read screenings of every tenant;
    every other token reads only its tenant's (its ``tenant`` claim; none: screenings made
    without a tenant)."""
    head_timeout: float = 10.0
    """Seconds a client has to send a request's head (app/core/http_server.py; 0: no limit)."""
    docs_enabled: bool = True
    """Serve the interactive API docs at /docs and /redoc (development); /openapi.json stays."""
    data_dir: Path = _ROOT / "var"
    """Where population runs keep their outputs (``<data_dir>/runs/<run id>/``)."""
    population_roots: tuple[Path, ...] = ()
    """Folders under which ``$prescreen`` may read a Bulk Data NDJSON folder named in its
    ``source`` (besides ``demo`` and the configured EHR's export); none: no folder at all."""
    population_workers: int = 0
    """Worker processes of a population run started over REST (0: every core)."""

    # --- who may open the pages under /ui/ (issue 15: OpenID Connect sign-in) ------------------
    ui_oidc_issuer: str | None = None
    """The hospital's OpenID Connect provider (its ``issuer``; the configuration is discovered at
    ``{issuer}/.well-known/openid-configuration``). Unset: nobody can sign in (the pages are open
    only with allow_unauthenticated, in development)."""
    ui_oidc_client_id: str | None = None
    ui_oidc_client_secret: SecretStr | None = None
    """Only for a confidential client; a public client signs in with PKCE alone."""
    ui_oidc_scopes: str = "openid profile email"
    ui_redirect_base: str | None = None
    """Base URL the provider redirects the browser back to (``{base}/ui/callback``, registered
    with the provider); defaults to the public base URL."""
    ui_roles_claim: str = "roles"
    """ID token claim holding the user's roles: a list or a space-separated string; a dotted
    path reaches into objects (``realm_access.roles`` for Keycloak)."""
    ui_role_map: dict[str, str] = {}
    """Provider role -> trialscreen role (coordinator, investigator, auditor); a role not mapped
    counts only when it is itself one of those three names."""
    ui_session_lifetime: int = 8 * 3600
    """Seconds a sign-in lasts (no sliding renewal: the user signs in again after it)."""
    ui_session_secret: SecretStr | None = None
    """Key that signs session cookies: set it (32+ random bytes) when several workers or replicas
    serve the pages; unset, each process generates its own, so sessions end on restart."""
    ui_id_token_algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES384", "PS256")
    ui_smart_client_id: str | None = None
    """Client id registered with the EHRs for the SMART EHR launch (``/ui/launch``); set, each
    card also carries a ``smart`` link opening its report inside the EHR. The EHRs are the FHIR
    bases of cds_clients and ehr_base_url."""
    ui_smart_roles: tuple[str, ...] = ("coordinator",)
    """Roles of a user launched from the EHR (the EHR vouches for who they are, not for their
    trial role); an investigator signs off after signing in with the hospital's provider."""

    # --- CDS cards (issue 15) -----------------------------------------------------------------
    cds_quiet_reasons: tuple[str, ...] = ("patient-declined", "already-screened")
    """Override reasons (codes of the card's overrideReasons) that quiet that trial's card for
    that patient."""
    cds_quiet_days: int = 90
    """How long such an override quiets the card."""

    # --- under load (issue 13) ------------------------------------------------------------------
    screen_workers: int | None = None
    """Worker processes that read records and evaluate screenings (app/screening/pool.py), off
    the event loop so /healthz and small requests stay fast. None: one per CPU core; 0: a thread
    of this process instead (tests, and single-core hosts that cannot spare the memory)."""
    screen_queue: int = 16
    """Screenings that may wait for a worker; beyond this a screening request gets 503 with
    Retry-After instead of waiting (an overloaded service answers quickly, then recovers)."""
    screen_retry_after: int = 2
    """Seconds named in Retry-After when the screening queue is full."""
    max_resources: int = 100_000
    """Most resources one request may carry (a posted Bundle, a hook's prefetch): counted in the
    received bytes before they are parsed; beyond it 413. A long hospital history holds tens of
    thousands; the body size limit alone admits about 300,000 small resources."""
    gc_gen0_threshold: int = 50_000
    """Allocations between young-generation garbage collections, after start-up (CPython's
    default 700 collects dozens of times while one large record is parsed, and parsed JSON holds
    no cycles to collect); 0 keeps the interpreter's default."""


@lru_cache
def get_settings() -> Settings:
    return Settings()


def zone_of(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)
