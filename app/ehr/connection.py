"""Wiring for the EHR: the one shared HTTP client, the auth it uses, and the record source."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from httpx_aiohttp import AiohttpTransport

from app.catalog.loader import Catalog
from app.core.settings import Settings
from app.ehr.auth import BearerAuth, EhrAuth, NoAuth, SmartBackendAuth
from app.ehr.client import FhirClient
from app.ehr.fetch_plan import FetchPlan, plan_for
from app.ehr.record_source import EhrRecordSource


@asynccontextmanager
async def ehr_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The one client every EHR call shares (connection pool, timeouts; no redirects, so a
    response cannot send the service, or its token, to another host).

    It runs on aiohttp's connection handling: httpx's own pool cost 6.9x aiohttp's time for 50
    concurrent reads on loopback here (bench/fetch_bench.py; encode/httpx#3215).
    """
    timeout = httpx.Timeout(settings.ehr_read_timeout, connect=settings.ehr_connect_timeout)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
    async with httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        transport=transport or AiohttpTransport(limits=limits, trust_env=False),
    ) as http:
        yield http


def ehr_auth(settings: Settings) -> EhrAuth:
    if settings.ehr_auth == "bearer":
        if settings.ehr_token is None:
            raise ValueError("TRIALSCREEN_EHR_TOKEN is required with ehr_auth=bearer")
        return BearerAuth(settings.ehr_token.get_secret_value())
    if settings.ehr_auth == "smart":
        missing = [
            name
            for name in ("smart_client_id", "smart_private_key", "smart_key_id")
            if getattr(settings, name) is None
        ]
        if missing or settings.ehr_base_url is None:
            raise ValueError(f"ehr_auth=smart needs ehr_base_url and {missing}")
        assert settings.smart_private_key is not None and settings.smart_client_id is not None
        return SmartBackendAuth(
            fhir_base=settings.ehr_base_url,
            client_id=settings.smart_client_id,
            private_key_pem=settings.smart_private_key.get_secret_value(),
            key_id=str(settings.smart_key_id),
            algorithm=settings.smart_algorithm,
            scopes=settings.smart_scopes,
        )
    return NoAuth()


def fhir_client(
    settings: Settings, http: httpx.AsyncClient, base_url: str, auth: EhrAuth
) -> FhirClient:
    """A client for one FHIR server, with the configured paging, retry and size limits."""
    return FhirClient(
        http,
        base_url,
        auth,
        page_size=settings.ehr_page_size,
        max_pages=settings.ehr_max_pages,
        max_attempts=settings.ehr_max_attempts,
        read_timeout=settings.ehr_read_timeout,
        max_response_bytes=settings.ehr_max_response_bytes,
        headers=settings.ehr_headers,
    )


def fetch_plan(settings: Settings, catalog: Catalog) -> FetchPlan:
    return plan_for(
        list(catalog.trials.values()),
        catalog.mappings,
        settings.ehr_medication_types,
        settings.ehr_codes_per_search,
    )


def ehr_record_source(
    settings: Settings, plan: FetchPlan, http: httpx.AsyncClient
) -> EhrRecordSource:
    assert settings.ehr_base_url is not None
    client = fhir_client(settings, http, settings.ehr_base_url, ehr_auth(settings))
    return EhrRecordSource(client, plan, settings.ehr_deadline)
