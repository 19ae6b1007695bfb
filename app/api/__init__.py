"""The FHIR REST edge: ``$screen`` (``screen``, body parsing in ``screen_request``), the
published resources (``published``), stored screenings and the audit trail (``history``),
health (``health``), what the routers share (``common``) and the OpenAPI contract (``openapi``).
Imports every layer below the edges, never ``cds``."""
