"""plan_version: which version of its experiment's plan each run belongs to, and the experiment's current one

An experiment is its name; its file can change between sweeps. ``experiments.plan_version`` is the version of
the plan last run (a hash of its expanded runs: ``tracker.experiment.plan.Plan.version``), ``runs.plan_version``
the newest plan the run was part of. Views (effects, report grids and effects, runs, score) show the runs of the
current version unless asked for all. NULL: recorded before this revision (every run counts as current until
the next sweep records a version).

Revision ID: 0011_plan_version
Revises: 0009_attention
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "0011_plan_version"
down_revision = "0009_attention"  # the lead relinks after 0010 at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("plan_version", sa.String(16)))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("plan_version", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("plan_version")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("plan_version")
