"""Population runs (issue 14): who started a pre-screening run, when, on which source and as-of
date, against which trials and criteria versions, how far it got and how it ended. A run still
``queued`` or ``running`` whose heartbeat has stopped was interrupted (the process died): the
service marks it ``failed`` when it starts, never leaving it half-listed as complete.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "population_run",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False, index=True),
        sa.Column("trials", sa.String(), nullable=False),
        sa.Column("criteria_versions", sa.String(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("who", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True, index=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat", sa.Float(), nullable=False),
        sa.Column("patients_total", sa.Integer(), nullable=True),
        sa.Column("patients_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("outcomes", sa.String(), nullable=False, server_default="{}"),
        sa.Column("errors", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("folder", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("population_run")
