# syntax=docker/dockerfile:1
# Build stage: install the service and its dependencies into a virtual environment.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install .

# Runtime stage: no build tools, non-root, criteria and mappings as data beside the code.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRIALSCREEN_CRITERIA_DIR=/srv/criteria \
    TRIALSCREEN_MAPPINGS_DIR=/srv/fhir_mappings
RUN useradd --system --uid 10001 --home-dir /srv trialscreen
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root criteria /srv/criteria
COPY --chown=root:root fhir_mappings /srv/fhir_mappings
USER trialscreen
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/fhir/metadata', timeout=2)"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
