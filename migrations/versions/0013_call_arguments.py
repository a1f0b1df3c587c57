"""call: each run's further pipeline call arguments (``call: {max_sequence_length: 512, ...}``) as one JSON mapping

Revision ID: 0013_call_arguments
Revises: 0012_ratings
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa

revision = "0013_call_arguments"
down_revision = "0012_ratings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("call", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("call")
