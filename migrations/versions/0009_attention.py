"""attention: each run's attention backend setting (``default`` or a diffusers attention backend name)

Revision ID: 0009_attention
Revises: 0008_image_files
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0009_attention"
down_revision = "0008_image_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("attention", sa.String(40)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("attention")
