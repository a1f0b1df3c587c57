"""metrics: per-image metric values (CLIP score, shapes, ...), one row per run and metric

Revision ID: 0007_metrics
Revises: 0006_prompt_language
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0007_metrics"
down_revision = "0006_prompt_language"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_metrics_run"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("version", sa.String(300), nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("scored_at", sa.DateTime, nullable=False),
        sa.Column("mlflow_synced_at", sa.DateTime),
        sa.UniqueConstraint("run_id", "name", name="uq_metrics_run_name"),
    )
    op.create_index("ix_metrics_name", "metrics", ["name"])


def downgrade() -> None:
    op.drop_index("ix_metrics_name", table_name="metrics")
    op.drop_table("metrics")
