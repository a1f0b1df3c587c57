"""MLflow sync: which runs are logged to MLflow, and each sweep's parent MLflow run

Revision ID: 0002_mlflow_sync
Revises: 0001_initial
Create Date: 2026-11-25
"""

from alembic import op
import sqlalchemy as sa

revision = "0002_mlflow_sync"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("mlflow_run_id", sa.String(64)))
        batch.add_column(sa.Column("mlflow_synced_at", sa.DateTime))
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("mlflow_run_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("mlflow_run_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("mlflow_synced_at")
        batch.drop_column("mlflow_run_id")
