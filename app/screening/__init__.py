"""A screening as the service issues it, shared by the REST operation and the CDS Hooks service:
the engine's answer turned into the GuidanceResponse and the row that is stored (``issued``).
Imports ``ehr``, ``store``, ``fhir_io``, ``engine`` and ``core``."""
