"""prompt language: each run's prompt syntax (plain, a1111, compel) and its LoRA adapters

Revision ID: 0006_prompt_language
Revises: 0005_throughput
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0006_prompt_language"
down_revision = "0005_throughput"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("prompt_syntax", sa.String(20)))
        batch.add_column(sa.Column("lora", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lora")
        batch.drop_column("prompt_syntax")
