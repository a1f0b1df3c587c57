"""``tracker worker``: a warm worker that keeps pipelines loaded and makes the runs submitted to the run store;
``tracker watch FILE``: re-plan a file on every save and queue only its new runs."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.workspace import Workspace


@click.command()
@click.option("--device", metavar="DEVICE", help="The device it generates on (cpu, cuda, cuda:1, mps) [default: auto].")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME",
              help="Serve only this experiment (repeatable) [default: every experiment in the store].")
@click.option("--max-memory", metavar="SIZE",
              help="Keep the loaded pipelines' weights within SIZE (e.g. 20GB): the least recently used are "
                   "unloaded [default: keep every pipeline loaded].")
@click.option("--idle-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Stop after this many seconds without work [default: run until Ctrl-C or SIGTERM].")
@click.option("--name", metavar="NAME", help="The worker's name in `tracker status` [default: host:pid].")
@click.option("--mlflow-uri", metavar="URI", help="MLflow tracking URI [default: MLFLOW_TRACKING_URI, else the workspace's store].")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@pass_workspace
def worker(ws: Workspace, device: str | None, experiments: tuple[str, ...], max_memory: str | None,
           idle_timeout: float | None, name: str | None, mlflow_uri: str | None, no_mlflow: bool) -> None:
    """A warm worker: a long-lived process on one device that keeps pipelines loaded and makes the runs
    that `tracker run FILE` (or `tracker watch FILE`) hands it through the run store.

    Start one per GPU (`--device cuda:0`, `--device cuda:1`, ...), on any machine that reaches the store
    (`--db postgresql+psycopg://...` in team mode). Submitted sweeps are served by priority, round-robin
    between experiments, first come first served within one. What it is doing: `tracker status`.
    """
    from dataclasses import replace

    from tracker.sweep.daemon import Daemon, parse_memory

    budget = parse_memory(max_memory)
    if mlflow_uri or no_mlflow:
        ws = replace(ws, mlflow_uri=mlflow_uri or ws.mlflow_uri, mlflow_enabled=not no_mlflow)
    Daemon(ws, device=device, experiments=experiments, max_memory=budget, idle_timeout=idle_timeout,
           name=name).run()
