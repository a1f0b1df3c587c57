"""claims: a run is claimed by a worker (with a lease) before it is generated; workers of a sweep

Revision ID: 0004_claims
Revises: 0003_reproducibility
Create Date: 2026-11-26

A worker is one process generating images (``tracker run``, one of ``--workers N``, an accelerate
rank, a Ray actor). A running run names its worker and the time its lease ends; a lease that ended
(a dead worker) makes the run claimable again.
"""

from alembic import op
import sqlalchemy as sa

revision = "0004_claims"
down_revision = "0003_reproducibility"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", name="fk_workers_sweep"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("device", sa.String(100)),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=False),
        sa.Column("runs_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("runs_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("busy_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("status", sa.String(20), nullable=False, server_default="working"),
    )
    op.create_index("ix_workers_sweep", "workers", ["sweep_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("worker_id", sa.Integer))
        batch.add_column(sa.Column("lease_until", sa.DateTime))
        batch.create_foreign_key("fk_runs_worker", "workers", ["worker_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("fk_runs_worker", type_="foreignkey")
        batch.drop_column("lease_until")
        batch.drop_column("worker_id")
    op.drop_index("ix_workers_sweep", table_name="workers")
    op.drop_table("workers")
