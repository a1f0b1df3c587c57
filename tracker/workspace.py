"""The workspace: one folder holding the run store, the images, the MLflow store and reports.

Default ``./.tracker``; ``--home`` or ``TRACKER_HOME`` move it; ``--db`` / ``TRACKER_DB_URL`` point the
run store at any SQLAlchemy URL. Names never become paths outside the workspace (``safe_join``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tracker.errors import UsageError

DEFAULT_HOME = ".tracker"


@dataclass(frozen=True)
class Workspace:
    home: Path
    db_url: str
    mlflow_uri: str | None = None  # None: the workspace's own store; "" would mean off (see mlflow_enabled)
    mlflow_enabled: bool = True
    mlflow_ui_url: str | None = None  # where report links point (default: where ``tracker ui`` serves)

    @classmethod
    def from_options(cls, home: str | None = None, db: str | None = None, mlflow_uri: str | None = None,
                     no_mlflow: bool = False) -> "Workspace":
        root = Path(home or os.environ.get("TRACKER_HOME") or DEFAULT_HOME).expanduser().resolve()
        url = db or os.environ.get("TRACKER_DB_URL") or f"sqlite:///{root / 'tracker.db'}"
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        return cls(home=root, db_url=url, mlflow_uri=uri, mlflow_enabled=not no_mlflow)

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def thumbs_dir(self) -> Path:
        """Report thumbnails the sweep wrote while each image was in memory (see ``tracker.thumbs``)."""
        return self.home / "thumbs"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    def image_path(self, experiment: str, key: str) -> Path:
        return safe_join(self.images_dir, experiment, f"{key}.png")

    def has_store(self) -> bool:
        """Whether the run store is there: read-only commands (a report, a dry run) must not create one."""
        from tracker import db

        path = db.sqlite_path(self.db_url)
        return path is None or path.exists()

    def ensure(self) -> "Workspace":
        self.home.mkdir(parents=True, exist_ok=True)
        return self


def safe_join(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root``, refusing anything that would land outside it."""
    root = Path(root).resolve()
    for p in parts:
        if not p or p in (".", "..") or "/" in p or "\\" in p or "\x00" in p:
            raise UsageError(f"{p!r} cannot be used as a file name under {root}")
    out = root.joinpath(*parts).resolve()
    if out != root and root not in out.parents:
        raise UsageError(f"{'/'.join(parts)!r} would leave {root}")
    return out
