"""The report and MLflow: links from run details to MLflow runs, and the report attached to the sweep's run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.store.records import RunRecord


def _optional(module: str, attr: str):
    """A function of an optional part (MLflow logging), or None when that part is not installed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


def mlflow_url(ws: WorkspaceConfig, r: "RunRecord | None") -> str | None:
    if r is None or not ws.mlflow_enabled or not r.mlflow_run_id:
        return None
    run_url = _optional("tracker.mlflow.ui", "run_url")
    if run_url is None:
        return None
    try:
        url = run_url(ws, r)
    except Exception:  # a broken MLflow setup must not cost the report; the link is left out
        return None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def attach_to_mlflow(ws: WorkspaceConfig, experiment: str, files: Sequence[tuple[Path, str]]) -> str | None:
    """Attach (path, artifact folder) pairs to the sweep's parent MLflow run when MLflow is on and its
    logging part is installed. Returns a warning line when that fails: the report on disk is the
    product, MLflow a copy of it."""
    if not ws.mlflow_enabled:
        return None
    attach = _optional("tracker.mlflow.client", "attach_artifacts")
    if attach is None:
        return None
    try:
        for path, artifact_path in files:
            if Path(path).exists():
                attach(ws, experiment, [Path(path)], artifact_path)
    except Exception as e:  # noqa: BLE001 - any MLflow failure is a warning here
        return f"warning: could not attach the report to MLflow: {type(e).__name__}: {e}"
    return None


def mlflow_files(index: Path) -> list[tuple[Path, str]]:
    """What of a report goes to MLflow: the page, thumbnails and grid images, not the full images
    (each child run holds its own image; the page falls back to the thumbnail)."""
    root = index.parent
    return [(index, "report"), (root / "thumbs", "report/thumbs"), (root / "grids", "report/grids")]
