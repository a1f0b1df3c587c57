"""image files: image paths relative to the workspace home; each image file's size and mtime when written;
the ``deterministic`` setting per run (NULL before it existed: off)

Image paths under the workspace folder become relative to it (a moved or copied workspace keeps its images);
paths outside it stay absolute. The home comes from ``tracker.db`` (``config.attributes["tracker_home"]``),
else, for the ``alembic`` command line, a SQLite file's folder; without one, paths stay as they are.

Revision ID: 0008_image_files
Revises: 0007_metrics
Create Date: 2026-11-26
"""

from pathlib import Path, PurePosixPath

from alembic import context, op
import sqlalchemy as sa

revision = "0008_image_files"
down_revision = "0007_metrics"
branch_labels = None
depends_on = None

runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("image_path", sa.Text))


def _home() -> Path | None:
    home = context.config.attributes.get("tracker_home")
    if home is not None:
        return Path(home).resolve()
    url = op.get_bind().engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent
    return None


def _rewrite(change) -> None:
    """``change(path) -> new path or None`` over every recorded image path, one UPDATE per changed row."""
    conn = op.get_bind()
    rows = conn.execute(sa.select(runs.c.id, runs.c.image_path).where(runs.c.image_path.isnot(None))).all()
    for rid, path in rows:
        new = change(path)
        if new is not None and new != path:
            conn.execute(runs.update().where(runs.c.id == rid).values(image_path=new))


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("image_size", sa.BigInteger))
        batch.add_column(sa.Column("image_mtime_ns", sa.BigInteger))
        batch.add_column(sa.Column("deterministic", sa.Boolean))
    home = _home()
    if home is None:
        return

    def relative(path: str) -> str | None:
        p = Path(path)
        return p.relative_to(home).as_posix() if p.is_absolute() and home in p.parents else None

    _rewrite(relative)


def downgrade() -> None:
    home = _home()
    if home is not None:
        _rewrite(lambda path: None if Path(path).is_absolute() else str(home / PurePosixPath(path)))
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("deterministic")
        batch.drop_column("image_mtime_ns")
        batch.drop_column("image_size")
