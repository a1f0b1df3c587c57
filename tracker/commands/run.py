"""``tracker run FILE``: generate every planned run that is not done yet."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.experiment.plan import DEFAULT_MAX_RUNS
from tracker.workspace import Workspace


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--max-runs", type=click.IntRange(min=1), default=DEFAULT_MAX_RUNS, show_default=True,
              help="Refuse plans larger than this.")
@click.option("--device", metavar="DEVICE", help="Run on this device (cpu, cuda, cuda:1, mps), overriding the file.")
@click.option("--retry-failed", is_flag=True, help="Run failed runs again.")
@click.option("--dry-run", is_flag=True, help="Show what would run; generate nothing.")
@click.option("--from", "from_key", metavar="KEY", help="Take the seed and settings of this run (refine around one seed).")
@click.option("--mlflow-uri", metavar="URI", help="MLflow tracking URI [default: MLFLOW_TRACKING_URI, else the workspace's store].")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--workers", metavar="N|auto", default=None,
              help="N worker processes on this machine (auto: one per CUDA device; on a CPU each takes its "
                   "share of the cores). With --ray: the number of actors.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster: auto, ray://HOST:PORT, or no value for a local cluster for this sweep "
                   "(needs the ray extra).")
@pass_workspace
def run(ws: Workspace, file: str, max_runs: int, device: str | None, retry_failed: bool, dry_run: bool,
        from_key: str | None, mlflow_uri: str | None, no_mlflow: bool, quiet: bool, workers: str | None,
        ray_address: str | None) -> int:
    """Generate the images of an experiment FILE, skipping runs already done.

    Each image is a run stored with its seed, settings, timings and memory; the sweep is logged to
    MLflow in the background. Exit status 1 when any run failed.
    """
    from tracker import api
    from tracker.sweep import runner

    if dry_run:
        _dry_run(ws, file, runner.RunOptions(max_runs=max_runs, from_key=from_key, retry_failed=retry_failed))
        return 0
    n = _workers(workers)
    if ray_address is None and workers is None:  # in this process (or one rank of an accelerate launch)
        result = api.run(file, home=ws, mlflow=False if no_mlflow else (mlflow_uri or True), progress=not quiet,
                         device=device, max_runs=max_runs, retry_failed=retry_failed, from_key=from_key)
        click.echo(runner.format_summary(result.summary))
        return 1 if result.failed else 0

    from dataclasses import replace

    from tracker.sweep import driver, pool

    if mlflow_uri or no_mlflow:
        ws = replace(ws, mlflow_uri=mlflow_uri or ws.mlflow_uri, mlflow_enabled=not no_mlflow)
    opts = runner.RunOptions(max_runs=max_runs, device=device, retry_failed=retry_failed, from_key=from_key,
                             progress=not quiet)
    if ray_address is not None:
        summary = driver.run(ws, file, opts, driver.RayActors(ray_address or None, n))
        click.echo(runner.format_summary(summary))
        return 1 if summary.failed else 0
    result = driver.run(ws, file, opts, driver.LocalPool(n, note=lambda line: click.echo(line, err=True)))
    click.echo(pool.format_pool(result))
    return 1 if result.failed or result.pending else 0


def _workers(value: str | None) -> int | None:
    """--workers: a positive number, or auto (None)."""
    if value is None or value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is not a positive number or auto", param_hint="--workers")
    return int(value)


def _dry_run(ws: Workspace, file: str, opts) -> None:
    from tracker.sweep import preparation
    from tracker.commands.expand import render_plan

    dry = preparation.dry_run(ws, file, opts)
    total = len(dry.plan.runs)
    click.echo(render_plan(dry.plan, limit=50))
    earlier = f", {dry.failed_earlier} failed earlier (use --retry-failed)" if dry.failed_earlier else ""
    click.echo(f"dry run: {len(dry.todo)} of {total} runs would be generated ({dry.done} already done{earlier})")
