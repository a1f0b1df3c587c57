"""reproducibility: each sweep's full environment and the results of ``tracker verify``

Revision ID: 0003_reproducibility
Revises: 0002_mlflow_sync
Create Date: 2026-11-25
"""

from alembic import op
import sqlalchemy as sa

revision = "0003_reproducibility"
down_revision = "0002_mlflow_sync"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("environment", sa.JSON))
        batch.add_column(sa.Column("verify", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("verify")
        batch.drop_column("environment")
