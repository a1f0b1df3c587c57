"""The run store's tables: the SQLAlchemy mirror of the Alembic migrations' head (``migrations/``; a test
autogenerates against these definitions, so a column added here needs its migration). ``tracker.store.runstore``
reads and writes them.
"""

from __future__ import annotations

import sqlalchemy as sa

from tracker.experiment.settings import SETTING_COLUMNS, Settings

metadata = sa.MetaData()


def setting_columns() -> list[sa.Column]:
    """The runs columns of the settings added since the first schema, from their ``Settings`` field metadata
    (``settings.SETTING_COLUMNS``): nullable, NULL for a run recorded before the setting existed."""
    return [sa.Column(name, getattr(sa, type_name)(*args)) for name, (type_name, *args) in SETTING_COLUMNS.items()]


experiments_t = sa.Table(
    "experiments", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("source_path", sa.Text),
    sa.Column("source_text", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("plan_version", sa.String(16)),  # 0011: the version of the plan last run (plan.Plan.version)
    sa.UniqueConstraint("name", name="uq_experiments_name"),
)

sweeps_t = sa.Table(
    "sweeps", metadata,
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
    sa.Column("mlflow_run_id", sa.String(64)),  # 0002
    sa.Column("environment", sa.JSON),  # 0003
    sa.Column("verify", sa.JSON),  # 0003
    sa.Column("idle_fraction", sa.Float),  # 0005: share of wall time outside pipeline calls
    sa.Column("warmup_seconds", sa.Float),  # 0005: compile + first-batch warm-up, outside steady timings
    # 0014: a sweep handed to warm workers (tracker.sweep.queue): submitted_by, priority, what it allows them to load
    sa.Column("submission", sa.JSON),
    sa.Index("ix_sweeps_experiment", "experiment_id"),
)

runs_t = sa.Table(
    "runs", metadata,
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
    sa.Column("mlflow_run_id", sa.String(64)),  # 0002
    sa.Column("mlflow_synced_at", sa.DateTime),  # 0002
    sa.Column("worker_id", sa.Integer, sa.ForeignKey("workers.id", name="fk_runs_worker")),  # 0004
    sa.Column("lease_until", sa.DateTime),  # 0004: a running run's claim ends then unless renewed
    sa.Column("image_size", sa.BigInteger),  # 0008: the image file's size and mtime when written
    sa.Column("image_mtime_ns", sa.BigInteger),  # 0008 (image_path is relative to the workspace since 0008)
    sa.Column("plan_version", sa.String(16)),  # 0011: the newest plan version the run was part of
    *setting_columns(),  # compile (0005), prompt_syntax, lora (0006), deterministic (0008), attention (0009), call (0013)
    sa.UniqueConstraint("experiment_id", "key", name="uq_runs_experiment_key"),
    sa.Index("ix_runs_experiment_status", "experiment_id", "status"),
    sa.Index("ix_runs_key", "key"),
)

events_t = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", name="fk_events_sweep")),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("data", sa.JSON),
    sa.Index("ix_events_sweep", "sweep_id"),
)

workers_t = sa.Table(  # 0004: one process generating images for a sweep (see tracker.sweep.claims)
    "workers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # NULL for a warm worker (0014), which serves many sweeps
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", name="fk_workers_sweep")),
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
    sa.Column("kind", sa.String(20)),  # 0014: "daemon" for `tracker worker` (tracker.sweep.daemon); NULL a sweep's
    sa.Column("experiments", sa.JSON),  # 0014: the experiments a daemon serves (NULL: all)
    sa.Column("activity", sa.JSON),  # 0014: a daemon's experiment, images/s, queue, loaded models
    sa.Index("ix_workers_sweep", "sweep_id"),
)

# One row per (run, metric): a metric's value for a run's image (NULL where it does not apply), the metric's
# version (with its model and revision for a model-based metric) and when MLflow got it.
metrics_t = sa.Table(
    "metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_metrics_run"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("version", sa.String(300), nullable=False),
    sa.Column("higher_is_better", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("scored_at", sa.DateTime, nullable=False),
    sa.Column("mlflow_synced_at", sa.DateTime),
    sa.UniqueConstraint("run_id", "name", name="uq_metrics_run_name"),
    sa.Index("ix_metrics_name", "name"),
)

# 0012: a person's judgements (tracker.metrics.ratings): a 1-5 score or thumbs (1 up, 0 down) of one run's image, or
# which of two images is better (``pair``: 1 the run's, 0 the other's, 0.5 a tie).
ratings_t = sa.Table(
    "ratings", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_ratings_run"), nullable=False),
    sa.Column("other_run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_ratings_other_run")),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("rater", sa.String(100), nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_ratings_run", "run_id"),
)

# Run columns that come from the plan (Settings fields plus the prompts).
PLAN_COLUMNS = ("axes", "prompt", "negative_prompt", "prompt_template", "negative_template", "seed",
                "plan_index") + tuple(Settings.__dataclass_fields__)
# Run columns the runner reports when a run ends (mark_done / mark_failed ``**fields``).
RESULT_COLUMNS = ("model_revision", "scheduler_config", "device", "batch_size_used", "seconds",
                  "seconds_per_step", "peak_memory_bytes", "image_path", "image_sha256", "image_size",
                  "image_mtime_ns")
SWEEP_COLUMNS = tuple(c.name for c in sweeps_t.columns if c.name not in ("id", "experiment_id"))
