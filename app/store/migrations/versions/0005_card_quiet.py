"""Quieted CDS cards (issue 15).

``card_quiet`` holds, per tenant, patient and trial, until when that trial's card is not shown
after a clinician overrode it with a quieting reason (``patient-declined``...).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "card_quiet",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("patient_ref", sa.String(), primary_key=True),
        sa.Column("trial_id", sa.String(), primary_key=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("screening_id", sa.String(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_card_quiet_until", "card_quiet", ["until"])


def downgrade() -> None:
    op.drop_index("ix_card_quiet_until", table_name="card_quiet")
    op.drop_table("card_quiet")
