"""``tracker sync`` (log runs that have not reached MLflow) and ``tracker ui`` (the MLflow UI)."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.workspace import WorkspaceConfig


@click.command()
@click.argument("experiment", required=False)
@click.option("--mlflow-uri", metavar="URI", help="MLflow tracking URI [default: MLFLOW_TRACKING_URI, else the workspace's store].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@pass_workspace
def sync(ws: WorkspaceConfig, experiment: str | None, mlflow_uri: str | None, quiet: bool) -> int:
    """Log done runs that have not reached MLflow yet (of EXPERIMENT, or of all experiments).

    Safe to repeat: a run key never gets a second MLflow run. Exit status 1 when runs are still waiting.
    """
    from dataclasses import replace

    from tracker.mlflow import sync as mlflow_sync

    if mlflow_uri:
        ws = replace(ws, mlflow_uri=mlflow_uri)
    result = mlflow_sync.sync(ws, experiment, progress=not quiet)
    if result.note:
        click.echo(f"note: {result.note}", err=True)
    if not result.logged and not result.waiting and not result.rescored and not result.prompts_linked:
        click.echo(f"nothing to sync: every done run is in MLflow at {result.uri}")
        return 0
    click.echo(result.message(experiment))
    from tracker.mlflow.ui import experiment_url

    link = experiment_url(ws, result.experiment_id)
    if link and result.logged:
        click.echo(f"MLflow: {link}")
    return 1 if result.waiting else 0


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local: the UI has no login).")
@pass_workspace
def ui(ws: WorkspaceConfig, port: int, host: str) -> int:
    """Start the MLflow UI on the workspace's MLflow store; Ctrl-C stops it."""
    from tracker.mlflow import ui as mlflow_ui

    return mlflow_ui.serve_ui(ws, host, port, echo=click.echo)
