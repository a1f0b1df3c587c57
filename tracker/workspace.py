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
class WorkspaceConfig:
    home: Path
    db_url: str
    mlflow_uri: str | None = None  # None: the workspace's own store; "" would mean off (see mlflow_enabled)
    mlflow_enabled: bool = True
    mlflow_ui_url: str | None = None  # where report links point (default: where ``tracker ui`` serves)

    @classmethod
    def from_options(cls, home: str | None = None, db: str | None = None, mlflow_uri: str | None = None,
                     no_mlflow: bool = False) -> "WorkspaceConfig":
        root = Path(home or os.environ.get("TRACKER_HOME") or DEFAULT_HOME).expanduser().resolve()
        from tracker.store.db import normalized_url

        url = normalized_url(db or os.environ.get("TRACKER_DB_URL") or f"sqlite:///{root / 'tracker.db'}")
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        return cls(home=root, db_url=url, mlflow_uri=uri, mlflow_enabled=not no_mlflow)

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def inputs_dir(self) -> Path:
        """Input images of image-conditioned runs, each once by its sha256 (see ``tracker.experiment.inputs``)."""
        return self.home / "inputs"

    @property
    def thumbs_dir(self) -> Path:
        """Report thumbnails the sweep wrote while each image was in memory (see ``tracker.images.thumbs``)."""
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
        from tracker.store import db

        path = db.sqlite_path(self.db_url)
        return path is None or path.exists()

    def image_file(self, stored: "str | Path | None") -> Path | None:
        """The file a stored image path names (``RunRecord.image``, a path in the store): see ``image_file``."""
        return image_file(self.home, stored)

    def ensure(self) -> "WorkspaceConfig":
        self.home.mkdir(parents=True, exist_ok=True)
        return self


def image_file(home: "Path | None", stored: "str | Path | None") -> Path | None:
    """THE resolver of stored image paths (every reader goes through it, the store when it hands out a
    RunRecord): a path relative to the workspace ``home`` (what a sweep records, so a moved or copied
    workspace keeps its images) is joined to it; an absolute one (an image outside the workspace, or a store
    written before 0008) is taken as it is. None when nothing is recorded (or a relative path and no home)."""
    if stored is None or stored == "":
        return None
    p = Path(stored)
    if p.is_absolute():
        return p
    return Path(home) / p if home is not None else None


def stored_image(home: "Path | None", path: "str | Path") -> str:
    """``path`` as the store records it: relative to ``home`` (POSIX separators) when it lies under it,
    else absolute. A relative ``path`` is taken from the current folder, as a user gave it."""
    p = Path(path).resolve()
    if home is not None:
        root = Path(home).resolve()
        if root in p.parents:
            return p.relative_to(root).as_posix()
    return str(p)


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
