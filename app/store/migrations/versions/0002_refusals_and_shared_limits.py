"""Aggregated refusals, tenants of screenings, and the state replicas share: rate-limit buckets
and seen token ids.

``audit_event.occurrences`` lets one row stand for every refused request from one source in one
minute (an unauthenticated flood writes one row a minute, not one per request). ``rate_bucket``
and ``seen_token`` hold the rate limiter and the CDS ``jti`` replay cache, so a restart or a
second worker enforces the same limit and refuses the same replay. ``screening.tenant`` is the
tenant of the client that asked for the screening; readers see their tenant's only.

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
    with op.batch_alter_table("screening") as batch:
        batch.drop_index("ix_screening_tenant")
        batch.drop_column("tenant")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("occurrences")
