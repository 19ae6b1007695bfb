"""Aggregated refusals, tenants of screenings, and the state replicas share: rate-limit buckets
and seen token ids.

``audit_event.occurrences`` lets one row stand for every refused request from one source in one
minute (an unauthenticated flood writes one row a minute, not one per request). ``rate_bucket``
and ``seen_token`` hold the rate limiter and the CDS ``jti`` replay cache, so a restart or a
second worker enforces the same limit and refuses the same replay. ``screening.tenant`` is the
tenant of the client that asked for the screening; readers see their tenant's only.
``pending_screening`` holds the screenings a CDS card links to while they are fetched in the
background, so an interrupted one is answered with a failure by any replica.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("occurrences", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("screening", sa.Column("tenant", sa.String(), nullable=True))
    op.create_index("ix_screening_tenant", "screening", ["tenant"])
    op.create_table(
        "pending_screening",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("trial_id", sa.String(), nullable=False),
        sa.Column("criteria_version", sa.String(), nullable=False),
        sa.Column("module", sa.String(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("patient_ref", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("card_uuid", sa.String(), nullable=True),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("expires", sa.Float(), nullable=False, index=True),
    )
    op.create_table(
        "rate_bucket",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
    )
    op.create_table(
        "seen_token",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("expires", sa.Float(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("seen_token")
    op.drop_table("rate_bucket")
    op.drop_table("pending_screening")
    with op.batch_alter_table("screening") as batch:
        batch.drop_index("ix_screening_tenant")
        batch.drop_column("tenant")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("occurrences")
