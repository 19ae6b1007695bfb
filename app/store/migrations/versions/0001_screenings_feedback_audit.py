"""Screenings as issued, CDS Hooks feedback, and the audit trail.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "screening",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("trial_id", sa.String(), nullable=False, index=True),
        sa.Column("criteria_version", sa.String(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("patient_ref", sa.String(), nullable=False, index=True),
        sa.Column("eligibility", sa.String(), nullable=False),
        sa.Column("record_digest", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("card_uuid", sa.String(), nullable=True, index=True),
        sa.Column("guidance", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "screening_id", sa.String(), sa.ForeignKey("screening.id"), nullable=False, index=True
        ),
        sa.Column("card_uuid", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("override_reason", sa.LargeBinary(), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("interaction", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("agent", sa.String(), nullable=False, index=True),
        sa.Column("patient_ref", sa.String(), nullable=True, index=True),
        sa.Column("entity_ref", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_event")
    op.drop_table("cds_feedback")
    op.drop_table("screening")
