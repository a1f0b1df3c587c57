"""``tracker score`` (score stored runs again, no regeneration) and ``tracker effects`` (paired axis effects).

Thin: options in, ``tracker.metrics`` and ``tracker.metrics.effects`` do the work; nothing heavy at module level.
"""

from __future__ import annotations

import json

import click

from tracker.cli import pass_workspace
from tracker.workspace import WorkspaceConfig


def _open(ws: WorkspaceConfig):
    from tracker.store.runstore import Store

    return Store.open(ws.db_url, create=False, home=ws.home)  # score and effects read stored runs: never create a store


@click.command()
@click.argument("experiment")
@click.option("--metric", "names", multiple=True, metavar="NAME",
              help="Score with this metric (repeatable) [default: the experiment file's metrics:].")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE", help="Device for model-based metrics.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--all-versions", is_flag=True,
              help="Also the runs of earlier versions of the experiment file [default: its current plan].")
@pass_workspace
def score(ws: WorkspaceConfig, experiment: str, names: tuple[str, ...], device: str, quiet: bool, all_versions: bool) -> int:
    """Score the stored images of EXPERIMENT with its metrics again, without generating anything.

    Values replace earlier ones and reach MLflow with the next `tracker sync`. A metric that cannot be
    loaded is reported in one line; the others are still scored (exit status 2 then).
    """
    from tracker.errors import UsageError
    from tracker.metrics import available
    from tracker.metrics.scoring import experiment_metrics, rescore

    with _open(ws) as store:
        file_names, options = experiment_metrics(store, experiment)
        chosen = list(dict.fromkeys(names)) or list(file_names)
        if not chosen:
            raise UsageError(f"experiment {experiment!r} names no metrics: give --metric NAME "
                             f"(known: {', '.join(sorted(available()))}) or add metrics: to its file")
        scorer = rescore(store, experiment, chosen, options, device, progress=not quiet, all_versions=all_versions)
    for name in chosen:
        if name not in scorer.errors:
            click.echo(f"{name}: {scorer.scored.get(name, 0)} images scored")
    return 2 if scorer.errors else 0


@click.command()
@click.argument("experiment")
@click.option("--metric", required=True, metavar="NAME", help="The stored metric to analyse (e.g. clip_score, shapes).")
@click.option("--axis", "axes", multiple=True, metavar="AXIS", help="Only this axis (repeatable) [default: every axis].")
@click.option("--baseline", metavar="LABEL", help="Compare against this label [default: each axis's first label].")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--by", metavar="AXIS", help="Per label of this axis (a prompt set's category), paired over its "
                                           "prompts and seeds; 'all' first.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.option("--all-versions", is_flag=True,
              help="Pool the runs of earlier versions of the experiment file too [default: its current plan].")
@pass_workspace
def effects(ws: WorkspaceConfig, experiment: str, metric: str, axes: tuple[str, ...], baseline: str | None, seed: int,
            by: str | None, as_json: bool, all_versions: bool) -> None:
    """Each axis label's mean METRIC and its paired difference to the baseline label.

    Pairs are runs that share the seed and every other axis value; the interval is a seeded bootstrap
    95% interval of the mean difference. `*` marks intervals that exclude 0.
    """
    from tracker.metrics import effects as fx
    from tracker.metrics import storage

    with _open(ws) as store:
        result = storage.effects(store, experiment, metric, axes or None, baseline, seed, all_versions, by=by)
    if by is not None:
        from tracker.metrics import suite

        if as_json:
            click.echo(json.dumps({"experiment": experiment, "by": by,
                                   "groups": [{by: g, **e.to_json()} for g, e in result]}, indent=2))
        else:
            click.echo(suite.render(result, by))
        return
    if as_json:
        click.echo(json.dumps({"experiment": experiment, **result.to_json()}, indent=2))
        return
    click.echo(fx.render(result))
