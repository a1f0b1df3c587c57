"""image-conditioned runs: input images by sha256 (image, mask_image, control_image, ip_adapter_image), their numbers
(strength, ControlNet scale and guidance window, IP-Adapter scale, the refiner hand-off) and the extra models
(controlnet, ip_adapter, refiner); NULL: a run recorded before (a text-to-image run)

Revision ID: 0015_image_inputs
Revises: 0014_warm_workers
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "0015_image_inputs"
down_revision = "0014_warm_workers"
branch_labels = None
depends_on = None

COLUMNS = (
    ("image", sa.String(64)), ("mask_image", sa.String(64)), ("control_image", sa.JSON),
    ("ip_adapter_image", sa.String(64)), ("strength", sa.Float), ("controlnet_conditioning_scale", sa.JSON),
    ("control_guidance_start", sa.Float), ("control_guidance_end", sa.Float), ("ip_adapter_scale", sa.Float),
    ("denoising_end", sa.Float), ("denoising_start", sa.Float), ("controlnet", sa.JSON), ("ip_adapter", sa.JSON),
    ("refiner", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
