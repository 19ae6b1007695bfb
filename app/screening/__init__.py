"""A screening as the service issues it, shared by the REST operation, the CDS Hooks service and
the web pages: the engine's answer turned into the GuidanceResponse and the row that is stored
(``issued``), the pool of worker processes that screen (``pool``) and the jobs they run
(``jobs``). Imports ``ehr``, ``store``, ``fhir_io``, ``engine``, ``catalog`` and ``core``."""
