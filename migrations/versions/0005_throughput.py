"""throughput: each sweep's idle fraction (share of wall time outside pipeline calls) and warm-up seconds;
each run's ``compile`` setting

Revision ID: 0005_throughput
Revises: 0004_claims
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0005_throughput"
down_revision = "0004_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("idle_fraction", sa.Float))
        batch.add_column(sa.Column("warmup_seconds", sa.Float))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("compile", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("compile")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("warmup_seconds")
        batch.drop_column("idle_fraction")
