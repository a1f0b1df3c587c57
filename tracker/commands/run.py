"""``tracker run FILE``: generate every planned run that is not done yet."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.experiment.plan import DEFAULT_MAX_RUNS
from tracker.workspace import WorkspaceConfig


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
              help="Run on a Ray cluster (needs the ray extra): at ADDRESS (auto, HOST:PORT, ray://HOST:PORT) by the "
                   "workspace's warm actors, started if missing and kept loaded for the next sweep; with no value "
                   "on a local cluster for this sweep only.")
@click.option("--local", is_flag=True,
              help="Generate in this process even when a warm worker (`tracker worker`) serves the store.")
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True,
              help="With a warm worker: sweeps of higher priority are served first.")
@pass_workspace
def run(ws: WorkspaceConfig, file: str, max_runs: int, device: str | None, retry_failed: bool, dry_run: bool,
        from_key: str | None, mlflow_uri: str | None, no_mlflow: bool, quiet: bool, workers: str | None,
        ray_address: str | None, local: bool, priority: int) -> int:
    """Generate the images of an experiment FILE, skipping runs already done.

    Each image is a run stored with its seed, settings, timings and memory; the sweep is logged to
    MLflow in the background. When a warm worker (`tracker worker`) of this run store is live, the runs
    are queued for it and followed from here (Ctrl-C withdraws those not started); --local generates
    here. Exit status 1 when any run failed.
    """
    from tracker import api
    from tracker.sweep import runner

    if dry_run:
        _dry_run(ws, file, runner.RunOptions(max_runs=max_runs, from_key=from_key, retry_failed=retry_failed))
        return 0
    n = _workers(workers)
    if ray_address is None and workers is None:  # a warm worker, else this process (or one accelerate rank)
        if not local:
            from tracker.sweep import queue

            opts = runner.RunOptions(max_runs=max_runs, device=device, retry_failed=retry_failed, from_key=from_key,
                                     progress=not quiet)
            sub = queue.submit(ws, file, opts, priority=priority)
            if sub is not None:
                code = _follow(ws, sub, quiet)
                if code is not None:
                    return code
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
    if ray_address:
        code = _ray_warm(ws, file, opts, ray_address, n, priority, quiet)
        if code is not None:
            return code
        summary = driver.run(ws, file, opts, driver.InProcess())  # every actor went away: the rest here
        click.echo(runner.format_summary(summary))
        return 1 if summary.failed else 0
    if ray_address is not None:
        summary = driver.run(ws, file, opts, driver.RayActors(ray_address or None, n))
        click.echo(runner.format_summary(summary))
        return 1 if summary.failed else 0
    result = driver.run(ws, file, opts, driver.LocalPool(n, note=lambda line: click.echo(line, err=True)))
    click.echo(pool.format_pool(result))
    return 1 if result.failed or result.pending else 0


def _follow(ws: WorkspaceConfig, sub, quiet: bool) -> int | None:
    """Follow a sweep handed to warm workers; None when they all went away (the caller generates the rest)."""
    import time

    from tracker.sweep import queue, runner
    from tracker.sweep.claim_loop import lease_seconds

    began = time.perf_counter()
    names = ", ".join(f"{w['name']} ({w['device']})" for w in sub.workers)
    click.echo(f"queued {len(sub.keys)} runs of {sub.experiment} (sweep {sub.sweep_id}) for the warm worker(s) "
               f"{names}; Ctrl-C withdraws those not started", err=True)
    with runner.progress_bar(len(sub.keys), sub.experiment, not quiet) as bar:
        outcome = queue.follow(ws, sub, bar, orphan_seconds=lease_seconds() + 2,
                               note=lambda line: click.echo(line, err=True))
    if outcome == "orphaned":
        from tracker.store.runstore import Store

        with Store.open(ws.db_url, home=ws.home) as store:
            queue.withdraw(store, sub.sweep_id, status="orphaned")
        click.echo(f"warning: no warm worker serves {sub.experiment} any more; generating the rest here", err=True)
        return None
    queue.finish(ws, sub, time.perf_counter() - began)
    click.echo(runner.format_summary(sub.summary))
    click.echo(queue.format_made_by(sub))
    return 1 if sub.summary.failed else 0


def _ray_warm(ws: WorkspaceConfig, file: str, opts, address: str, n: int | None, priority: int,
              quiet: bool) -> int | None:
    """``--ray ADDRESS``: the workspace's warm actors on that cluster (started if missing) make the plan,
    submitted to the run store; None when they all went away (the caller makes the rest here)."""
    from tracker.sweep import queue, ray_warm

    ray_warm.start(ws, address, n, opts.device, note=None if quiet else (lambda line: click.echo(line, err=True)))
    sub = queue.submit(ws, file, opts, priority=priority, require_worker=False)
    return _follow(ws, sub, quiet)


def _workers(value: str | None) -> int | None:
    """--workers: a positive number, or auto (None)."""
    if value is None or value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is not a positive number or auto", param_hint="--workers")
    return int(value)


def _dry_run(ws: WorkspaceConfig, file: str, opts) -> None:
    from tracker.sweep import preparation
    from tracker.commands.expand import render_plan

    dry = preparation.dry_run(ws, file, opts)
    total = len(dry.plan.runs)
    click.echo(render_plan(dry.plan, limit=50))
    earlier = f", {dry.failed_earlier} failed earlier (use --retry-failed)" if dry.failed_earlier else ""
    click.echo(f"dry run: {len(dry.todo)} of {total} runs would be generated ({dry.done} already done{earlier})")
