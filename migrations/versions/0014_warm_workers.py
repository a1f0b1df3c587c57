"""warm workers: a long-lived ``tracker worker`` (kind daemon) serving submitted sweeps

workers.kind ("daemon" for ``tracker worker``; NULL for a sweep's own worker), workers.experiments (the
experiments a daemon serves, NULL: all), workers.activity (what it is doing: experiment, images/s, queue,
loaded models), workers.sweep_id nullable (a daemon serves many sweeps); sweeps.submission (a sweep handed to
warm workers: who submitted it, its priority, what it allows the worker to load).

Revision ID: 0014_warm_workers
Revises: 0013_call_arguments
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "0014_warm_workers"
down_revision = "0013_call_arguments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as b:
        b.add_column(sa.Column("kind", sa.String(20)))
        b.add_column(sa.Column("experiments", sa.JSON))
        b.add_column(sa.Column("activity", sa.JSON))
        b.alter_column("sweep_id", existing_type=sa.Integer, nullable=True)
    with op.batch_alter_table("sweeps") as b:
        b.add_column(sa.Column("submission", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as b:
        b.drop_column("submission")
    op.execute("UPDATE runs SET worker_id = NULL WHERE worker_id IN (SELECT id FROM workers WHERE sweep_id IS NULL)")
    op.execute("DELETE FROM workers WHERE sweep_id IS NULL")
    with op.batch_alter_table("workers") as b:
        b.alter_column("sweep_id", existing_type=sa.Integer, nullable=False)
        b.drop_column("activity")
        b.drop_column("experiments")
        b.drop_column("kind")
