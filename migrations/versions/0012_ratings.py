"""ratings: a person's judgements of images (a 1-5 score, thumbs, or which of two images is better)

Revision ID: 0012_ratings
Revises: 0011_plan_version
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "0012_ratings"
down_revision = "0011_plan_version"  # relinked after 0011 (defects-a); 0010 goes before 0011 at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_ratings_run"), nullable=False),
        sa.Column("other_run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_ratings_other_run")),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("rater", sa.String(100), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_ratings_run", "ratings", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_ratings_run", table_name="ratings")
    op.drop_table("ratings")
