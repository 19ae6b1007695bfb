"""Where screenings, CDS Hooks feedback and the audit trail are kept: SQLModel tables on SQLite or
PostgreSQL (``database``), AuditEvent rows and their FHIR rendering (``audit``), the schema's
Alembic migrations (``migrations``). Imports ``core`` only."""
