# syntax=docker/dockerfile:1
# The trialscreen service.
#   docker build -t trialscreen .
#   docker run -p 8000:8000 -v trialscreen-data:/var/lib/trialscreen trialscreen
# Settings are TRIALSCREEN_* environment variables (README, "Settings" and the EHR table); in
# production point TRIALSCREEN_DATABASE_URL at PostgreSQL (postgresql+psycopg://...).

# One pinned image for both stages: the virtual environment built in the first runs on the
# second's interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Build stage: the project and its runtime dependencies, installed from pyproject.toml into a
# virtual environment: the same `pip install .` of the same pyproject CI installs (less `[dev]`).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY app ./app
RUN /opt/venv/bin/pip install --no-cache-dir .

# Runtime stage: no compilers or pip caches, a non-root user, criteria and mappings as data
# beside the code, screenings on a volume the user owns.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRIALSCREEN_CRITERIA_DIR=/srv/criteria \
    TRIALSCREEN_MAPPINGS_DIR=/srv/fhir_mappings \
    TRIALSCREEN_DATABASE_URL=sqlite:////var/lib/trialscreen/trialscreen.db
RUN groupadd --system --gid 10001 trialscreen \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /srv \
       --shell /usr/sbin/nologin trialscreen \
    && mkdir -p /var/lib/trialscreen \
    && chown 10001:10001 /var/lib/trialscreen
COPY --from=build /opt/venv /opt/venv
COPY criteria /srv/criteria
COPY fhir_mappings /srv/fhir_mappings
VOLUME ["/var/lib/trialscreen"]
# Numeric, so an orchestrator's runAsNonRoot check can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# One server process, and every core used: screenings run in worker processes of its own
# (TRIALSCREEN_SCREEN_WORKERS, default one per core, capped by the container's CPU quota), which
# take jobs from one queue. uvicorn --workers would not do better: its workers lose TCP_NODELAY
# on the pre-bound socket (a 40 ms stall per response) and one worker takes every keep-alive
# connection. The Prometheus metrics at /metrics are this process's; scale out with containers.
# No access log: uvicorn's writes the raw path and query string, which may carry patient ids;
# the service logs one JSON line per request with the route template instead.
# No proxy headers in uvicorn: the app judges Forwarded / X-Forwarded-* itself, from the proxies
# in TRIALSCREEN_TRUSTED_PROXIES, and must see the proxy's own address to do so.
# Idle keep-alive connections close after 5 s; h11 refuses a request head over 16 KiB; the
# protocol of app/core/http_server.py closes a connection whose head is not in within
# TRIALSCREEN_HEAD_TIMEOUT (10 s), which uvicorn alone does not bound.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", "--no-access-log", "--no-proxy-headers", "--timeout-keep-alive", "5", "--h11-max-incomplete-event-size", "16384", "--http", "app.core.http_server:HeadTimeoutProtocol"]
