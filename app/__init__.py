"""trialscreen: FHIR-integrated clinical-trial eligibility screening.

The packages are layers; every import points down this list (``tests/test_layers.py`` holds the
rule):

- ``main`` (the ASGI app, ``app.main:app``) and ``openapi_document`` (writes the contract)
- ``api`` (REST routers), ``cds`` (CDS Hooks) and ``ui`` (the web pages): the HTTP edges,
  independent of each other
- ``population`` (pre-screening a whole population: NDJSON in, candidates and funnel out)
- ``access`` (who may call), ``screening`` (a screening as the service issues it)
- ``ehr`` (reading records from an EHR) and ``store`` (the database)
- ``fhir_io`` (FHIR Bundle in, GuidanceResponse out)
- ``engine`` (pure evaluation over the lean record)
- ``catalog`` (criteria, terminology, published definitions)
- ``core`` (settings, errors, observability) and ``demo`` (the bundled patients)
"""
