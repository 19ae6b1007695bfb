"""Investigators' sign-offs, kept beside the machine's screening and never changed.

``signoff`` holds one row per decision an investigator records on a stored screening: the
overall decision (eligible / not eligible), a note, and a decision on each review item (JSON).
Rows are only ever inserted: a later sign-off on the same screening stands beside the earlier
one, and the screening itself is never edited.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signoff",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "screening_id", sa.String(), sa.ForeignKey("screening.id"), nullable=False, index=True
        ),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("items", sa.LargeBinary(), nullable=False),
        sa.Column("signed_by", sa.String(), nullable=False),
        sa.Column("signed_by_name", sa.String(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signoff")
