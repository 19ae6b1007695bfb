"""Alembic migrations of the service's database (run by ``Store`` at start)."""
