"""``tracker worker``: a warm worker that keeps pipelines loaded and makes the runs submitted to the run store;
``tracker watch FILE``: re-plan a file on every save and queue only its new runs."""

from __future__ import annotations

import click

from tracker.cli import pass_workspace
from tracker.workspace import WorkspaceConfig


@click.command()
@click.option("--device", metavar="DEVICE", help="The device it generates on (cpu, cuda, cuda:1, mps) [default: auto].")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME",
              help="Serve only this experiment (repeatable) [default: every experiment in the store].")
@click.option("--max-memory", metavar="SIZE",
              help="Keep the loaded pipelines' weights within SIZE (e.g. 20GB): the least recently used are "
                   "unloaded [default: no budget; pipelines are unloaded, least recently used first, only when the "
                   "device's free memory is less than the next model's weight files].")
@click.option("--idle-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Stop after this many seconds without work [default: run until Ctrl-C or SIGTERM].")
@click.option("--name", metavar="NAME", help="The worker's name in `tracker status` [default: host:pid].")
@click.option("--mlflow-uri", metavar="URI", help="MLflow tracking URI [default: MLFLOW_TRACKING_URI, else the workspace's store].")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Start the workspace's warm workers as detached actors on the Ray cluster at ADDRESS (auto, "
                   "HOST:PORT, ray://HOST:PORT), one per GPU or CPU slot, and return; `tracker run FILE --ray "
                   "ADDRESS` uses them [idle timeout default: 600 s].")
@click.option("--actors", type=click.IntRange(min=1), metavar="N",
              help="With --ray: this many actors [default: one per GPU of the cluster, else one per CPU slot].")
@click.option("--stop", is_flag=True, help="With --ray: stop the workspace's warm actors on that cluster.")
@pass_workspace
def worker(ws: WorkspaceConfig, device: str | None, experiments: tuple[str, ...], max_memory: str | None,
           idle_timeout: float | None, name: str | None, mlflow_uri: str | None, no_mlflow: bool,
           ray_address: str | None, actors: int | None, stop: bool) -> None:
    """A warm worker: a long-lived process on one device that keeps pipelines loaded and makes the runs
    that `tracker run FILE` (or `tracker watch FILE`) hands it through the run store.

    Start one per GPU (`--device cuda:0`, `--device cuda:1`, ...), on any machine that reaches the store
    (`--db postgresql+psycopg://...` in team mode). Submitted sweeps are served by priority, round-robin
    between experiments, first come first served within one. What it is doing: `tracker status`.

    With --ray ADDRESS the workers are detached actors on a Ray cluster instead, started ahead of the
    first `tracker run FILE --ray ADDRESS` (which would start them too) and kept until --idle-timeout.
    """
    from dataclasses import replace

    from tracker.sweep.daemon import Daemon, parse_memory

    budget = parse_memory(max_memory)
    if mlflow_uri or no_mlflow:
        ws = replace(ws, mlflow_uri=mlflow_uri or ws.mlflow_uri, mlflow_enabled=not no_mlflow)
    if ray_address or stop or actors:
        from tracker.errors import UsageError
        from tracker.sweep import ray_warm

        if not ray_address:
            raise UsageError(f"--{'stop' if stop else 'actors'} goes with --ray ADDRESS")
        if name:
            raise UsageError("--name: warm actors are named after the workspace (see `tracker status`)")
        if stop:
            names = ray_warm.stop(ws, ray_address)
            click.echo(f"stopped {len(names)} warm actor(s)" + (f": {', '.join(names)}" if names else ""))
            return
        ray_warm.start(ws, ray_address, actors, device, experiments, budget,
                       ray_warm.DEFAULT_IDLE_SECONDS if idle_timeout is None else idle_timeout,
                       note=click.echo)
        return
    Daemon(ws, device=device, experiments=experiments, max_memory=budget, idle_timeout=idle_timeout,
           name=name).run()


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True,
              help="The queued sweeps' priority (higher first).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, metavar="SECONDS",
              help="How often the file (and its wildcard files) are checked for a save.")
@click.option("--device", metavar="DEVICE", help="Only for warm workers on this device.")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, help="Refuse plans larger than this.")
@click.option("--report", "refresh_report", is_flag=True,
              help="Rebuild the experiment's HTML report (as `tracker report`, not attached to MLflow) each time "
                   "the queued runs are all made; reload the page to see the new images.")
@pass_workspace
def watch(ws: WorkspaceConfig, file: str, priority: int, interval: float, device: str | None,
          max_runs: int | None, refresh_report: bool) -> None:
    """Re-plan FILE on every save (and on every save of its wildcard files) and queue only its new runs for
    the warm workers (`tracker worker`); runs done are not made again, runs the new plan dropped leave the
    queue. Prints what changed and the progress; Ctrl-C withdraws the runs still queued. The studio
    (`tracker studio`) shows the new images as they are made; --report rebuilds the HTML report too."""
    import time
    from pathlib import Path

    from tracker.errors import TrackerError
    from tracker.experiment.plan import DEFAULT_MAX_RUNS
    from tracker.sweep import queue, runner

    path = Path(file)
    opts = runner.RunOptions(max_runs=max_runs or DEFAULT_MAX_RUNS, device=device, command=f"tracker watch {file}")
    w = queue.Watch(ws, path, opts, priority)
    files = queue.watched_files(path)
    seen = None
    shown = None
    reported = None  # the (done, failed) counts the report was last built with
    click.echo(f"watching {file} (Ctrl-C stops and withdraws the runs still queued)", err=True)
    try:
        while True:
            sig = queue.signature(files)
            if sig != seen:
                files = queue.watched_files(path)  # the wildcard folder may have changed with the file
                seen = queue.signature(files)
                try:
                    click.echo(w.replan())
                except TrackerError as e:
                    click.echo(f"error: {e} (not queued; fix the file and save it again)")
                shown = None
            left = w.progress()
            if left:
                now = (left["done"], left["failed"], left["pending"] + left["running"])
                if now != shown:
                    shown = now
                    click.echo(f"{w.experiment}: {now[0]} done, {now[1]} failed, {now[2]} to make of "
                               f"{len(w.keys)} planned", err=True)
                if refresh_report and now[2] == 0 and now[:2] != reported:
                    reported = now[:2]
                    _rebuild_report(ws, w.experiment)
            time.sleep(interval)
    except KeyboardInterrupt:
        n = w.stop()
        if n:
            click.echo(f"withdrew {n} runs of {w.experiment} not started from the queue", err=True)
        raise


def _rebuild_report(ws: WorkspaceConfig, experiment: str) -> None:
    """``tracker watch --report``: the report again, its path printed; a failure is a line, the watch goes on."""
    from tracker.api import Workspace as Api
    from tracker.errors import TrackerError

    try:
        index, _, _ = Api(ws).build_report(experiment, attach_mlflow=False)
    except TrackerError as e:
        click.echo(f"report not rebuilt: {e}", err=True)
        return
    click.echo(f"{experiment}: report {index.as_uri()}")
