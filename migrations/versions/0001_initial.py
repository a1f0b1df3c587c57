"""initial schema: experiments, sweeps, runs, events

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25

A sweep is one ``tracker run`` invocation; a run is one image, identified within its experiment by
its key (a hash of everything that changes the image). Times are naive UTC.
"""

from alembic import op
import sqlalchemy as sa

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source_path", sa.Text),
        sa.Column("source_text", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_experiments_name"),
    )
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id", name="fk_sweeps_experiment"),
                  nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("host", sa.String(255)),
        sa.Column("command", sa.Text),
        sa.Column("device", sa.String(100)),
        sa.Column("versions", sa.JSON),
        sa.Column("planned", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float),
        sa.Column("images_per_second", sa.Float),
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),
    )
    op.create_index("ix_sweeps_experiment", "sweeps", ["experiment_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id", name="fk_runs_experiment"),
                  nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("axes", sa.JSON, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False, server_default=""),
        sa.Column("prompt_template", sa.Text),
        sa.Column("negative_template", sa.Text),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("model_revision", sa.String(100)),
        sa.Column("vae", sa.Text, nullable=False, server_default="default"),
        sa.Column("scheduler", sa.String(100), nullable=False),
        sa.Column("scheduler_options", sa.JSON),
        sa.Column("scheduler_config", sa.JSON),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("guidance_scale", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String(20), nullable=False),
        sa.Column("device", sa.String(40)),
        sa.Column("generator_device", sa.String(40)),
        sa.Column("attention_slicing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("vae_slicing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("vae_tiling", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("cpu_offload", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("batch_size", sa.String(16), nullable=False, server_default="auto"),
        sa.Column("batch_size_used", sa.Integer),
        sa.Column("allow_pickle", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("error", sa.Text),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", name="fk_runs_sweep")),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("seconds", sa.Float),
        sa.Column("seconds_per_step", sa.Float),
        sa.Column("peak_memory_bytes", sa.BigInteger),
        sa.Column("image_path", sa.Text),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("plan_index", sa.Integer),
        sa.UniqueConstraint("experiment_id", "key", name="uq_runs_experiment_key"),
    )
    op.create_index("ix_runs_experiment_status", "runs", ["experiment_id", "status"])
    op.create_index("ix_runs_key", "runs", ["key"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", name="fk_events_sweep")),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("data", sa.JSON),
    )
    op.create_index("ix_events_sweep", "events", ["sweep_id"])


def downgrade() -> None:
    op.drop_index("ix_events_sweep", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_runs_key", table_name="runs")
    op.drop_index("ix_runs_experiment_status", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_sweeps_experiment", table_name="sweeps")
    op.drop_table("sweeps")
    op.drop_table("experiments")
